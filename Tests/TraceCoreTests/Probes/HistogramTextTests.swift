import Foundation
import Testing
@testable import TraceCore

/// `HistogramText.render`: the text `traceplane probe show` and `traceplane trace` print,
/// from metrics as the API returns them (decoded the way the CLI decodes them).
@Suite("HistogramText")
struct HistogramTextTests {
    static let head = #""name":"reads","mechanism":"tp_btf","target":"syscall:read","since":"2026-12-01T00:00:00Z","overhead":{"run_time_ns":0,"run_count":0}"#

    func metrics(_ members: String) throws -> ProbeMetrics {
        try ReportJSON.decoder().decode(ProbeMetrics.self, from: Data("{\(Self.head),\(members)}".utf8))
    }

    @Test("Without an aggregate: totals, the funclatency-style latency histogram and the top processes")
    func latency() throws {
        let m = try metrics(#"""
            "calls":812,"errors":3,"by_process":[{"pid":42,"comm":"nginx","calls":800},{"pid":7,"comm":"sshd","calls":12}],
            "latency_ns":{"count":812,"sum":1624000,"buckets":[{"lower":1024,"upper":2047,"count":700},{"lower":4096,"upper":8191,"count":112}]}
            """#)
        #expect(HistogramText.render(m) == """
            probe reads  target syscall:read  mechanism tp_btf
            calls 812  errors 3  avg 2000 ns

                 nsecs               : count      distribution
                  1024 -> 2047       : 700       |****************************************|
                  2048 -> 4095       : 0         |                                        |
                  4096 -> 8191       : 112       |******                                  |

            PID     COMM              CALLS
            42      nginx             800
            7       sshd              12

            """)
    }

    @Test("Per key, after today's output: the key, calls and errors, then the value's log2 histogram with the negative slot first and empty slots filled")
    func keyedLog2() throws {
        let m = try metrics(#"""
            "calls":818,"errors":5,"by_process":[],"latency_ns":{"count":0,"sum":0,"buckets":[]},
            "aggregate":{"by":["comm","arg:fd"],"value":"ret","histogram":{"kind":"log2"},"dropped_keys":4,"total_keys":3,"keys":[
              {"key":{"comm":"nginx","arg:fd":7},"calls":812,"errors":0,
               "value":{"count":812,"sum":1663488,"buckets":[{"lower":1024,"upper":2047,"count":12},{"lower":4096,"upper":8191,"count":800}]}},
              {"key":{"comm":"curl","arg:fd":3},"calls":3,"errors":2,
               "value":{"count":3,"sum":-16,"buckets":[{"lower":-9223372036854775808,"upper":-1,"count":2},{"lower":2,"upper":3,"count":1}]}}]}
            """#)
        #expect(HistogramText.render(m) == """
            probe reads  target syscall:read  mechanism tp_btf
            calls 818  errors 5

            keys comm, arg:fd  value ret  showing 2 of 3  dropped 4 calls (the key table was full)

            comm = nginx, arg:fd = 7  calls 812  errors 0  avg 2048
                   ret               : count      distribution
                  1024 -> 2047       : 12        |                                        |
                  2048 -> 4095       : 0         |                                        |
                  4096 -> 8191       : 800       |****************************************|

            comm = curl, arg:fd = 3  calls 3  errors 2  avg -5
                   ret               : count      distribution
                  -inf -> -1         : 2         |****************************************|
                     0 -> 1          : 0         |                                        |
                     2 -> 3          : 1         |********************                    |

            """)
    }

    @Test("A linear histogram: the slot below min and the one from the top up show their open ends as -inf and inf")
    func keyedLinear() throws {
        let m = try metrics(#"""
            "calls":9,"errors":0,"by_process":[],"latency_ns":null,
            "aggregate":{"by":["field:bytes_req"],"value":"field:bytes_alloc","histogram":{"kind":"linear","min":0,"max":256,"step":64},
              "dropped_keys":0,"total_keys":1,"keys":[
              {"key":{"field:bytes_req":100},"calls":9,"errors":0,
               "value":{"count":9,"sum":1500,"buckets":[{"lower":-9223372036854775808,"upper":-1,"count":1},{"lower":64,"upper":127,"count":4},
                                                      {"lower":256,"upper":9223372036854775807,"count":4}]}}]}
            """#)
        #expect(HistogramText.keys(try #require(m.aggregate), totalKeys: m.totalKeys) == """

            keys field:bytes_req  value field:bytes_alloc  showing 1 of 1

            field:bytes_req = 100  calls 9  errors 0  avg 166
            field:bytes_alloc                      : count      distribution
                         -inf -> -1                : 1         |**********                              |
                            0 -> 63                : 0         |                                        |
                           64 -> 127               : 4         |****************************************|
                          128 -> 191               : 0         |                                        |
                          192 -> 255               : 0         |                                        |
                          256 -> inf               : 4         |****************************************|

            """)
    }

    @Test("Counts only: a header per key, no histogram; a cgroup whose path is unknown shows its id; latency values are nsecs")
    func countsOnlyAndCgroups() throws {
        let counts = try metrics(#"""
            "calls":5,"errors":1,"by_process":[],"latency_ns":null,
            "aggregate":{"by":["cgroup","errno"],"value":"none","histogram":null,"dropped_keys":0,"total_keys":2,"keys":[
              {"key":{"cgroup":"/system.slice/nginx.service","errno":"ok"},"cgroup_id":4242,"calls":4,"errors":0,"value":null},
              {"key":{"cgroup":null,"errno":"EBADF"},"cgroup_id":77,"calls":1,"errors":1,"value":null}]}
            """#)
        #expect(HistogramText.keys(try #require(counts.aggregate), totalKeys: counts.totalKeys) == """

            keys cgroup, errno  value none  showing 2 of 2

            cgroup = /system.slice/nginx.service, errno = ok  calls 4  errors 0

            cgroup = cgroup-id:77, errno = EBADF  calls 1  errors 1

            """)
        let unkeyed = try metrics(#"""
            "calls":2,"errors":0,"by_process":[],"latency_ns":null,
            "aggregate":{"by":[],"value":"latency","histogram":{"kind":"log2"},"dropped_keys":0,"total_keys":1,"keys":[
              {"key":{},"calls":2,"errors":0,"value":{"count":2,"sum":3000,"buckets":[{"lower":1024,"upper":2047,"count":2}]}}]}
            """#)
        #expect(HistogramText.keys(try #require(unkeyed.aggregate), totalKeys: unkeyed.totalKeys) == """

            keys (none)  value latency  showing 1 of 1

            calls 2  errors 0  avg 1500 ns
                 nsecs               : count      distribution
                  1024 -> 2047       : 2         |****************************************|

            """)
    }
}
