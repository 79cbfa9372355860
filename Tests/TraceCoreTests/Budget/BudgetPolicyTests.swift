import Testing
@testable import TraceCore

/// Budget decisions on an injected clock: seconds are given, not slept.
@Suite("Budget policy (throttle, suspend, hysteresis, hold-off)")
struct BudgetPolicyTests {
    static let cpu1 = BudgetPolicy.Limits(maxCPUPercent: 1)

    static func at(_ s: Int) -> Duration { .seconds(s) }

    static func m(_ rate: Double, _ ns: Double?, peak: Double? = nil) -> BudgetPolicy.Measurement {
        BudgetPolicy.Measurement(eventsPerSecond: rate, nanosecondsPerCall: ns, peakEventsPerSecond: peak)
    }

    @Test("over max_cpu_percent: 1-in-N with N the smallest power of two projected at 70 % of the limit")
    func throttles() throws {
        var p = BudgetPolicy(now: Self.at(0))
        p.measured(nanosecondsPerCall: 200)
        // 1M calls/s × 200 ns = 20 % of a CPU; 0.7 % needs 200 / N ≤ 7 ns: N = 32.
        let step1 = p.step(now: Self.at(1), measured: Self.m(1_000_000, 200), limits: Self.cpu1)
        let t = try #require(step1)
        #expect(t.from == .active && t.to == .throttled && t.sampleEvery == 32)
        #expect(p.state == .throttled && p.sampleEvery == 32)
        #expect(p.reason?.contains("20 % of a CPU") == true)
        #expect(p.reason?.contains("recording 1 call in 32") == true)
    }

    @Test("no cost measured at the current setting: no CPU decision")
    func waitsForAMeasurement() {
        var p = BudgetPolicy(now: Self.at(0))
        let step2 = p.step(now: Self.at(1), measured: Self.m(5_000_000, nil), limits: Self.cpu1)
        #expect(step2 == nil)
        #expect(p.state == .active)
    }

    @Test("a floor cost over the limit at any sampling suspends (parked); after the hold-off it is measured, then parked again or resumed")
    func suspendsThenResumes() throws {
        var p = BudgetPolicy(now: Self.at(0))
        p.measured(nanosecondsPerCall: 200)
        let t1 = p.step(now: Self.at(1), measured: Self.m(1_000_000, 200), limits: Self.cpu1)
        #expect(t1?.to == .throttled)
        // At 1-in-32, 20 ns per call: the floor is (20 × 32 − 200) / 31 = 14.2 ns, 1.42 %.
        p.measured(nanosecondsPerCall: 20)
        #expect(abs((p.floorCost ?? 0) - 14.19) < 0.01)
        // No sampling is enough, by this one measurement: one more step first (4 times
        // less), in case the window was off.
        let t2a = p.step(now: Self.at(3), measured: Self.m(1_000_000, 20), limits: Self.cpu1)
        #expect(t2a?.to == .throttled && t2a?.sampleEvery == 128)
        p.measured(nanosecondsPerCall: 14.19 + 185.81 / 128) // the floor again
        let t2 = p.step(now: Self.at(4), measured: Self.m(1_000_000, 15.64), limits: Self.cpu1)
        let suspended = try #require(t2)
        #expect(suspended.to == .suspended && suspended.parked && suspended.counted && p.parked)
        #expect(p.reason?.contains("suspended (recording nothing)") == true)
        // Parked: nothing before the hold-off (10 s).
        let t3 = p.step(now: Self.at(13), measured: Self.m(0, nil), limits: Self.cpu1)
        #expect(t3 == nil)
        // Then attached again, recording nothing, to be measured: not a counted transition.
        let t4 = p.step(now: Self.at(14), measured: Self.m(0, nil), limits: Self.cpu1)
        let probing = try #require(t4)
        #expect(probing.to == .suspended && !probing.parked && !probing.counted && !p.parked)
        p.measured(nanosecondsPerCall: 5) // a call recorded by nobody: the floor
        let t5 = p.step(now: Self.at(15), measured: Self.m(1_000_000, 5), limits: Self.cpu1)
        #expect(t5 == nil, "measured for probeFor (2 s) first")
        // Still 1M calls/s: even the floor is not under half of 1 %. Parked again, for 20 s.
        let t6 = p.step(now: Self.at(16), measured: Self.m(1_000_000, 5), limits: Self.cpu1)
        let again = try #require(t6)
        #expect(again.to == .suspended && again.parked && !again.counted && p.holdOff == .seconds(20))
        let t7 = p.step(now: Self.at(35), measured: Self.m(0, nil), limits: Self.cpu1)
        #expect(t7 == nil)
        let t8 = p.step(now: Self.at(36), measured: Self.m(0, nil), limits: Self.cpu1)
        #expect(t8?.parked == false)
        // A peak in the last seconds still counts.
        let t9 = p.step(now: Self.at(38), measured: Self.m(1_000, 5, peak: 1_000_000), limits: Self.cpu1)
        #expect(t9?.parked == true && p.holdOff == .seconds(40))
        let t10 = p.step(now: Self.at(78), measured: Self.m(0, nil), limits: Self.cpu1)
        #expect(t10?.parked == false)
        // 20,000 calls/s: every call recorded would cost 0.4 %, under half of 1 %.
        let t11 = p.step(now: Self.at(80), measured: Self.m(20_000, 5), limits: Self.cpu1)
        let resumed = try #require(t11)
        #expect(resumed.from == .suspended && resumed.to == .active && resumed.sampleEvery == 1 && !resumed.parked)
        #expect(p.reason == nil && !p.parked)
    }

    @Test("resuming picks the sampling that projects under half the budget")
    func resumesThrottled() throws {
        var p = BudgetPolicy(now: Self.at(0))
        p.measured(nanosecondsPerCall: 200)
        _ = p.step(now: Self.at(1), measured: Self.m(10_000_000, 200), limits: Self.cpu1)
        // 10M/s × 200 ns = 200 %: 0.7 % needs N ≥ 286, so 512 (no floor is known yet).
        #expect(p.sampleEvery == 512)
        p.measured(nanosecondsPerCall: 2) // the floor: (2 × 512 − 200) / 511 = 1.61 ns
        let t0 = p.step(now: Self.at(3), measured: Self.m(10_000_000, 2), limits: Self.cpu1)
        #expect(t0?.to == .throttled && t0?.sampleEvery == 2048, "one more step before suspending")
        p.measured(nanosecondsPerCall: 1.61 + 198.39 / 2048)
        let t1 = p.step(now: Self.at(4), measured: Self.m(10_000_000, 1.71), limits: Self.cpu1)
        #expect(t1?.to == .suspended)
        let t2 = p.step(now: Self.at(14), measured: Self.m(0, nil), limits: Self.cpu1)
        #expect(t2?.parked == false)
        // 100,000 calls/s measured: (1.61 + 198.4 / N) ns × 100k ≤ 0.5 % needs N ≥ 5: 8.
        let t3 = p.step(now: Self.at(16), measured: Self.m(100_000, 1.61), limits: Self.cpu1)
        let r = try #require(t3)
        #expect(r.to == .throttled && r.sampleEvery == 8)
    }

    @Test("throttled: N halves only under half the budget, and not within relaxAfter of a change")
    func relaxesWithHysteresis() throws {
        var p = BudgetPolicy(now: Self.at(0))
        p.measured(nanosecondsPerCall: 200)
        let step11 = p.step(now: Self.at(1), measured: Self.m(1_000_000, 200), limits: Self.cpu1)
        _ = try #require(step11)
        p.measured(nanosecondsPerCall: 6.25) // 200 / 32: no floor
        // The load drops to 100,000 calls/s: every call would cost 2 %, 1-in-2 1 %, 1-in-4 0.5 %.
        let step12 = p.step(now: Self.at(3), measured: Self.m(100_000, 6.25), limits: Self.cpu1)
        #expect(step12 == nil, "within relaxAfter (5 s)")
        var seen: [UInt32] = []
        for second in 6...60 {
            if let t = p.step(now: Self.at(second), measured: Self.m(100_000, 200 / Double(p.sampleEvery)), limits: Self.cpu1) {
                seen.append(t.sampleEvery)
            }
        }
        // 32 → 16 → 8, then 1-in-4 would project 0.5 %: not under half of 1 %. It stops at 8.
        #expect(seen == [16, 8])
        #expect(p.state == .throttled && p.sampleEvery == 8)
    }

    @Test("a rate swinging around the limit does not flap: one throttle, no relax while the peak is high")
    func noFlapping() {
        var p = BudgetPolicy(now: Self.at(0))
        p.measured(nanosecondsPerCall: 100)
        var transitions = 0
        var rates: [Double] = []
        for second in 1...120 {
            // 80,000 and 120,000 calls/s in turn: 0.8 % and 1.2 % recording every call.
            let rate: Double = second % 2 == 0 ? 120_000 : 80_000
            rates = Array((rates + [rate]).suffix(5))
            let cost = p.projectedCost(sampleEvery: p.sampleEvery, current: nil) ?? 100
            if p.step(now: Self.at(second), measured: Self.m(rate, cost, peak: rates.max()), limits: Self.cpu1) != nil { transitions += 1 }
        }
        #expect(transitions == 1)
        #expect(p.state == .throttled && p.sampleEvery == 2)
    }

    @Test("max_events_per_second alone suspends without sampling; probing over half of it parks again for twice as long")
    func eventsBudget() throws {
        let limits = BudgetPolicy.Limits(maxEventsPerSecond: 1000)
        var p = BudgetPolicy(now: Self.at(0))
        let t1 = p.step(now: Self.at(1), measured: Self.m(900, nil), limits: limits)
        #expect(t1 == nil)
        let t2 = p.step(now: Self.at(2), measured: Self.m(5_000, nil), limits: limits)
        let s = try #require(t2)
        #expect(s.to == .suspended && s.sampleEvery == 1 && s.parked)
        #expect(p.reason?.hasPrefix("5000 events/s, over max_events_per_second 1000") == true)
        let t3 = p.step(now: Self.at(12), measured: Self.m(0, nil), limits: limits)
        #expect(t3?.parked == false)
        let t4 = p.step(now: Self.at(14), measured: Self.m(600, nil), limits: limits)
        #expect(t4?.parked == true && p.holdOff == .seconds(20), "600/s is not under half of 1,000")
        let t5 = p.step(now: Self.at(34), measured: Self.m(0, nil), limits: limits)
        #expect(t5?.parked == false)
        let t6 = p.step(now: Self.at(36), measured: Self.m(400, nil), limits: limits)
        #expect(t6?.to == .active)
        // Over it again soon after the resume: the hold-off doubles again.
        let t7 = p.step(now: Self.at(40), measured: Self.m(5_000, nil), limits: limits)
        #expect(t7?.to == .suspended && p.holdOff == .seconds(40))
        // A PUT: every call again, attached, and the hold-off back to 10 s.
        let t8 = p.reset(now: Self.at(42))
        #expect(t8?.to == .active && t8?.parked == false)
        #expect(p.holdOff == .seconds(10) && p.state == .active && p.sampleEvery == 1 && !p.parked)
    }
}
