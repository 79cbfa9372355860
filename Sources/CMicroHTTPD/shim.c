// SPDX-License-Identifier: Apache-2.0
//
// Non-variadic wrappers around libmicrohttpd (see include/cmicrohttpd.h).

#include "cmicrohttpd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <microhttpd.h>

_Static_assert(TP_MHD_TERMINATED_COMPLETED_OK == MHD_REQUEST_TERMINATED_COMPLETED_OK, "MHD termination code");
_Static_assert(TP_MHD_TERMINATED_WITH_ERROR == MHD_REQUEST_TERMINATED_WITH_ERROR, "MHD termination code");
_Static_assert(TP_MHD_TERMINATED_TIMEOUT_REACHED == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED, "MHD termination code");
_Static_assert(TP_MHD_TERMINATED_DAEMON_SHUTDOWN == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN, "MHD termination code");
_Static_assert(TP_MHD_TERMINATED_READ_ERROR == MHD_REQUEST_TERMINATED_READ_ERROR, "MHD termination code");
_Static_assert(TP_MHD_TERMINATED_CLIENT_ABORT == MHD_REQUEST_TERMINATED_CLIENT_ABORT, "MHD termination code");
_Static_assert(TP_MHD_READER_END_OF_STREAM == MHD_CONTENT_READER_END_OF_STREAM, "MHD reader code");
_Static_assert(TP_MHD_READER_END_WITH_ERROR == MHD_CONTENT_READER_END_WITH_ERROR, "MHD reader code");
_Static_assert(__builtin_types_compatible_p(tp_mhd_reader_fn, MHD_ContentReaderCallback),
               "tp_mhd_reader_fn must be MHD_ContentReaderCallback");
_Static_assert(__builtin_types_compatible_p(tp_mhd_reader_free_fn, MHD_ContentReaderFreeCallback),
               "tp_mhd_reader_free_fn must be MHD_ContentReaderFreeCallback");

struct tp_mhd_daemon {
  struct MHD_Daemon *mhd;
  uint16_t port;
  void *context;
  tp_mhd_request_started_fn request_started;
  tp_mhd_access_fn access;
  tp_mhd_completed_fn completed;
  tp_mhd_log_fn log;
};

// MHD -> shim trampolines. `cls` is always the tp_mhd_daemon.

static void *tp_uri_log(void *cls, const char *uri, struct MHD_Connection *connection) {
  struct tp_mhd_daemon *d = cls;
  return d->request_started(d->context, uri, connection);
}

static enum MHD_Result tp_access(void *cls, struct MHD_Connection *connection,
                                 const char *url, const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **con_cls) {
  struct tp_mhd_daemon *d = cls;
  return d->access(d->context, connection, url, method, version, upload_data,
                   upload_data_size, con_cls)
             ? MHD_YES
             : MHD_NO;
}

static void tp_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  struct tp_mhd_daemon *d = cls;
  d->completed(d->context, connection, con_cls, (int)toe);
}

static void tp_log(void *cls, const char *format, va_list ap) {
  struct tp_mhd_daemon *d = cls;
  // MHD logs right after a failed bind()/listen() and before returning NULL:
  // keep errno intact for tp_mhd_start's caller.
  int saved_errno = errno;
  if (d->log != NULL) {
    char message[512];
    int n = vsnprintf(message, sizeof message, format, ap);
    if (n >= 0) {
      size_t length = strnlen(message, sizeof message);
      while (length > 0 && (message[length - 1] == '\n' || message[length - 1] == '\r'))
        message[--length] = '\0';
      d->log(d->context, message);
    }
  }
  errno = saved_errno;
}

bool tp_mhd_tls_supported(void) {
  return MHD_is_feature_supported(MHD_FEATURE_TLS) == MHD_YES;
}

tp_mhd_daemon *tp_mhd_start(const tp_mhd_options *options, tp_mhd_start_status *status,
                            int *error_number) {
  struct sockaddr_storage address;
  memset(&address, 0, sizeof address);
  unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                       MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;

  struct sockaddr_in *v4 = (struct sockaddr_in *)&address;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&address;
  if (inet_pton(AF_INET, options->bind_address, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(options->port);
  } else if (inet_pton(AF_INET6, options->bind_address, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(options->port);
    // "::" means every address: accept IPv4 too (IPV6_V6ONLY off).
    flags |= IN6_IS_ADDR_UNSPECIFIED(&v6->sin6_addr) ? MHD_USE_DUAL_STACK : MHD_USE_IPv6;
  } else {
    *status = TP_MHD_START_INVALID_ADDRESS;
    *error_number = EINVAL;
    return NULL;
  }

  bool tls = options->tls_certificate_pem != NULL || options->tls_private_key_pem != NULL;
  if (tls) {
    if (!tp_mhd_tls_supported()) {
      *status = TP_MHD_START_TLS_UNSUPPORTED;
      *error_number = ENOTSUP;
      return NULL;
    }
    flags |= MHD_USE_TLS;
  }

  struct tp_mhd_daemon *d = calloc(1, sizeof *d);
  if (d == NULL) {
    *status = TP_MHD_START_OUT_OF_MEMORY;
    *error_number = ENOMEM;
    return NULL;
  }
  d->context = options->context;
  d->request_started = options->request_started;
  d->access = options->access;
  d->completed = options->completed;
  d->log = options->log;

  struct MHD_OptionItem items[16];
  size_t n = 0;
  // The logger first, so that errors in later options are routed too.
  items[n++] = (struct MHD_OptionItem){MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)&tp_log, d};
  items[n++] = (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, &address};
  items[n++] = (struct MHD_OptionItem){MHD_OPTION_URI_LOG_CALLBACK, (intptr_t)&tp_uri_log, d};
  items[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)&tp_completed, d};
  if (options->connection_limit > 0)
    items[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT,
                                         (intptr_t)options->connection_limit, NULL};
  if (options->connection_memory_limit > 0)
    items[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                                         (intptr_t)options->connection_memory_limit, NULL};
  if (options->connection_timeout_seconds > 0)
    items[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT,
                                         (intptr_t)options->connection_timeout_seconds, NULL};
  if (options->thread_pool_size > 1)
    items[n++] = (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE,
                                         (intptr_t)options->thread_pool_size, NULL};
  if (tls) {
    // MHD copies neither string, but it only reads them during MHD_start_daemon.
    items[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0,
                                         (void *)options->tls_certificate_pem};
    items[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0,
                                         (void *)options->tls_private_key_pem};
  }
  items[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};

  errno = 0;
  d->mhd = MHD_start_daemon(flags, options->port, NULL, NULL, &tp_access, d,
                            MHD_OPTION_ARRAY, items, MHD_OPTION_END);
  if (d->mhd == NULL) {
    int saved_errno = errno;
    free(d);
    *status = TP_MHD_START_DAEMON_FAILED;
    *error_number = saved_errno;
    return NULL;
  }

  const union MHD_DaemonInfo *info = MHD_get_daemon_info(d->mhd, MHD_DAEMON_INFO_BIND_PORT);
  d->port = info != NULL ? info->port : options->port;
  *status = TP_MHD_START_OK;
  *error_number = 0;
  return d;
}

uint16_t tp_mhd_bound_port(const tp_mhd_daemon *daemon) { return daemon->port; }

void tp_mhd_stop(tp_mhd_daemon *daemon) {
  MHD_stop_daemon(daemon->mhd);
  free(daemon);
}

struct tp_header_iteration {
  tp_mhd_header_fn fn;
  void *context;
};

static enum MHD_Result tp_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                 size_t key_size, const char *value, size_t value_size) {
  (void)kind;
  struct tp_header_iteration *it = cls;
  it->fn(it->context, key, key_size, value, value_size);
  return MHD_YES;
}

int tp_mhd_connection_headers(struct MHD_Connection *connection, tp_mhd_header_fn fn,
                              void *context) {
  struct tp_header_iteration it = {fn, context};
  return MHD_get_connection_values_n(connection, MHD_HEADER_KIND, &tp_header, &it);
}

bool tp_mhd_connection_client_address(struct MHD_Connection *connection, char *buffer,
                                      size_t size, uint16_t *port) {
  const union MHD_ConnectionInfo *info =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (info == NULL || info->client_addr == NULL)
    return false;
  const struct sockaddr *sa = info->client_addr;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    if (port != NULL)
      *port = ntohs(in->sin_port);
    return inet_ntop(AF_INET, &in->sin_addr, buffer, (socklen_t)size) != NULL;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    if (port != NULL)
      *port = ntohs(in6->sin6_port);
    return inet_ntop(AF_INET6, &in6->sin6_addr, buffer, (socklen_t)size) != NULL;
  }
  return false;
}

struct MHD_Response *tp_mhd_response_create(const void *data, size_t size) {
  return MHD_create_response_from_buffer(size, (void *)data, MHD_RESPMEM_MUST_COPY);
}

bool tp_mhd_response_add_header(struct MHD_Response *response, const char *name,
                                const char *value) {
  return MHD_add_response_header(response, name, value) == MHD_YES;
}

struct MHD_Response *tp_mhd_response_create_streamed(tp_mhd_reader_fn reader,
                                                     tp_mhd_reader_free_fn free_fn,
                                                     void *context) {
  // The block size only sizes a buffer MHD uses for known-size bodies; chunked
  // bodies are read straight into the connection's write buffer.
  return MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, reader, context, free_fn);
}

bool tp_mhd_connection_set_timeout(struct MHD_Connection *connection, unsigned int seconds) {
  return MHD_set_connection_option(connection, MHD_CONNECTION_OPTION_TIMEOUT, seconds) == MHD_YES;
}

void tp_mhd_response_destroy(struct MHD_Response *response) {
  MHD_destroy_response(response);
}

bool tp_mhd_queue_response(struct MHD_Connection *connection, unsigned int status_code,
                           struct MHD_Response *response) {
  return MHD_queue_response(connection, status_code, response) == MHD_YES;
}

void tp_mhd_suspend(struct MHD_Connection *connection) { MHD_suspend_connection(connection); }

void tp_mhd_resume(struct MHD_Connection *connection) { MHD_resume_connection(connection); }
