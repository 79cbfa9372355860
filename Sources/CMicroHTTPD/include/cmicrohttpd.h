// SPDX-License-Identifier: Apache-2.0
//
// Thin, non-variadic shim over libmicrohttpd for Swift.
//
// Swift never sees <microhttpd.h>: MHD_start_daemon, MHD_get_daemon_info,
// MHD_get_connection_info, MHD_set_connection_option and the error logger are
// variadic, so every call goes through a `tp_mhd_` function here. MHD types stay opaque.

#ifndef TP_CMICROHTTPD_H
#define TP_CMICROHTTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#pragma clang assume_nonnull begin

struct MHD_Connection;
struct MHD_Response;

/// A running daemon plus the callbacks the shim forwards to. Opaque.
typedef struct tp_mhd_daemon tp_mhd_daemon;

/// Why a request ended (copy of `enum MHD_RequestTerminationCode`, checked in shim.c).
enum {
  TP_MHD_TERMINATED_COMPLETED_OK = 0,
  TP_MHD_TERMINATED_WITH_ERROR = 1,
  TP_MHD_TERMINATED_TIMEOUT_REACHED = 2,
  TP_MHD_TERMINATED_DAEMON_SHUTDOWN = 3,
  TP_MHD_TERMINATED_READ_ERROR = 4,
  TP_MHD_TERMINATED_CLIENT_ABORT = 5,
};

/// Called once per request, as soon as the request line is parsed, with the raw
/// request target (path and query, still percent-encoded). The returned pointer
/// becomes `*request_context` for the access and completed callbacks; MHD always
/// calls `completed` for a request that went through this callback.
typedef void *_Nullable (*tp_mhd_request_started_fn)(void *_Nullable context,
                                                     const char *uri,
                                                     struct MHD_Connection *connection);

/// MHD's access handler without `enum MHD_Result`: return false to close the
/// connection (serious error), true otherwise.
typedef bool (*tp_mhd_access_fn)(void *_Nullable context,
                                 struct MHD_Connection *connection,
                                 const char *url,
                                 const char *method,
                                 const char *version,
                                 const char *_Nullable upload_data,
                                 size_t *upload_data_size,
                                 void *_Nullable *_Nonnull request_context);

/// Called when a request is over (response sent, client gone, timeout, shutdown).
typedef void (*tp_mhd_completed_fn)(void *_Nullable context,
                                    struct MHD_Connection *connection,
                                    void *_Nullable *_Nonnull request_context,
                                    int termination_code);

/// MHD's error log, already formatted (no trailing newline).
typedef void (*tp_mhd_log_fn)(void *_Nullable context, const char *message);

/// One header: name and value with lengths (not necessarily NUL-free).
typedef void (*tp_mhd_header_fn)(void *_Nullable context,
                                 const char *name, size_t name_length,
                                 const char *_Nullable value, size_t value_length);

/// Daemon settings. Zero means "MHD's default" for the numeric limits.
typedef struct tp_mhd_options {
  /// Numeric IPv4 or IPv6 address to bind, e.g. "127.0.0.1", "::1", "::".
  /// "::" binds dual stack (IPv4 too).
  const char *bind_address;
  /// TCP port; 0 asks the kernel for an ephemeral port (see tp_mhd_bound_port).
  uint16_t port;
  unsigned int connection_limit;
  size_t connection_memory_limit;
  unsigned int connection_timeout_seconds;
  /// 0 or 1: one internal polling thread; more: a pool of polling threads.
  unsigned int thread_pool_size;
  /// PEM certificate chain and private key; both NULL for plain HTTP.
  const char *_Nullable tls_certificate_pem;
  const char *_Nullable tls_private_key_pem;

  void *_Nullable context;
  tp_mhd_request_started_fn request_started;
  tp_mhd_access_fn access;
  tp_mhd_completed_fn completed;
  tp_mhd_log_fn _Nullable log;
} tp_mhd_options;

typedef enum tp_mhd_start_status {
  TP_MHD_START_OK = 0,
  /// bind_address is not a numeric IPv4/IPv6 address (error_number EINVAL).
  TP_MHD_START_INVALID_ADDRESS = 1,
  /// TLS requested but this libmicrohttpd has no TLS support (error_number ENOTSUP).
  TP_MHD_START_TLS_UNSUPPORTED = 2,
  /// The shim could not allocate its state (error_number ENOMEM).
  TP_MHD_START_OUT_OF_MEMORY = 3,
  /// MHD_start_daemon failed; error_number is errno as MHD left it (bind, listen, …).
  TP_MHD_START_DAEMON_FAILED = 4,
} tp_mhd_start_status;

/// Starts a daemon with an internal polling thread (epoll), suspend/resume and
/// the error log routed to `options->log`. All option strings are copied or used
/// only during the call. Returns NULL on failure with `*status` and `*error_number` set.
tp_mhd_daemon *_Nullable tp_mhd_start(const tp_mhd_options *options,
                                      tp_mhd_start_status *status,
                                      int *error_number);

/// The port the listening socket is bound to (useful after asking for port 0).
uint16_t tp_mhd_bound_port(const tp_mhd_daemon *daemon);

/// MHD_stop_daemon and free. No connection may be suspended at this point.
/// After it returns no callback runs any more.
void tp_mhd_stop(tp_mhd_daemon *daemon);

/// Whether this libmicrohttpd was built with TLS.
bool tp_mhd_tls_supported(void);

/// Calls `fn` for each request header, in order. Returns the number of headers.
int tp_mhd_connection_headers(struct MHD_Connection *connection,
                              tp_mhd_header_fn fn,
                              void *_Nullable context);

/// Writes the client's numeric address ("127.0.0.1", "::1") to `buffer`
/// (46 bytes are always enough). Returns false if unknown.
bool tp_mhd_connection_client_address(struct MHD_Connection *connection,
                                      char *buffer, size_t size,
                                      uint16_t *_Nullable port);

/// A response whose body is copied from `data` (MHD_RESPMEM_MUST_COPY).
struct MHD_Response *_Nullable tp_mhd_response_create(const void *_Nullable data, size_t size);
bool tp_mhd_response_add_header(struct MHD_Response *response,
                                const char *name, const char *value);
void tp_mhd_response_destroy(struct MHD_Response *response);

/// What a content reader returns besides a byte count (copies of
/// MHD_CONTENT_READER_END_*, checked in shim.c).
enum {
  /// The body is complete: with chunked encoding MHD sends the last chunk.
  TP_MHD_READER_END_OF_STREAM = -1,
  /// The body cannot be completed: MHD closes the connection at once.
  TP_MHD_READER_END_WITH_ERROR = -2,
};

/// MHD's content reader (the same type as MHD_ContentReaderCallback, checked in
/// shim.c): copy at most `max` bytes to `buffer` and return their count, or a
/// TP_MHD_READER_END_ value. Returning 0 is only allowed after suspending the
/// connection from inside the reader (tp_mhd_suspend); MHD calls it again once the
/// connection is resumed. Runs on the connection's polling thread.
typedef ssize_t (*tp_mhd_reader_fn)(void *_Nullable context, uint64_t position,
                                    char *buffer, size_t max);
/// Called exactly once, when MHD destroys the response (sent, connection closed,
/// timed out, daemon stopped, or never queued).
typedef void (*tp_mhd_reader_free_fn)(void *_Nullable context);

/// A response of unknown size whose body comes from `reader` (HTTP/1.1 clients get
/// chunked encoding; HTTP/1.0 ones get the body until the connection closes).
/// Returns NULL on failure, and then `free_fn` is not called.
struct MHD_Response *_Nullable tp_mhd_response_create_streamed(tp_mhd_reader_fn reader,
                                                               tp_mhd_reader_free_fn free_fn,
                                                               void *_Nullable context);

/// Sets this connection's inactivity timeout (0: none), replacing the daemon's.
/// Only from a callback on the connection's polling thread while it is not suspended.
bool tp_mhd_connection_set_timeout(struct MHD_Connection *connection, unsigned int seconds);

/// Only from the access handler (or for a suspended connection).
bool tp_mhd_queue_response(struct MHD_Connection *connection,
                           unsigned int status_code,
                           struct MHD_Response *response);

/// Only from the access handler or a content reader (see tp_mhd_reader_fn).
void tp_mhd_suspend(struct MHD_Connection *connection);
/// From any thread, exactly once per suspend, while the daemon runs.
void tp_mhd_resume(struct MHD_Connection *connection);

#pragma clang assume_nonnull end

#endif
