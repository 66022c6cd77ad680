import LinuxSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Starts `/bin/sh -c script` as a child of the test process.
private func startShell(_ script: String) throws -> Int32 {
    switch try ChildSpec(argv: ["/bin/sh", "-c", script]).spawn() {
    case let .started(pid): return pid
    case let .failed(step, code): throw SystemError("start /bin/sh (step \(step))", errno: code)
    }
}

@Suite(.serialized)
struct WaitStatusTests {
    @Test func anExitIsItsStatus() throws {
        let pid = try startShell("exit 7")
        let status = Children.wait(pid)
        #expect(status == .exited(7))
        #expect(status?.shellStatus == 7)
    }

    @Test func aSignalDeathIs128PlusTheSignal() throws {
        let pid = try startShell("kill -9 $$")
        let status = Children.wait(pid)
        #expect(status == .signaled(SIGKILL))
        #expect(status?.shellStatus == 137)
    }

    @Test func decodesRawStatuses() {
        #expect(WaitStatus(raw: 0) == .exited(0))
        #expect(WaitStatus(raw: 255 << 8) == .exited(255))
        #expect(WaitStatus(raw: SIGTERM) == .signaled(SIGTERM))
        // A core dump sets bit 7; the signal is still the low seven bits.
        #expect(WaitStatus(raw: 0x80 | SIGSEGV) == .signaled(SIGSEGV))
    }

    @Test func aFailedExecIsReportedWithItsErrno() throws {
        let outcome = try ChildSpec(argv: ["/nonexistent/program"]).spawn()
        guard case let .failed(step, code) = outcome else {
            Issue.record("expected a failure, got \(outcome)")
            return
        }
        #expect(step == .exec)
        #expect(code == .noSuchFileOrDirectory)
    }
}

@Suite(.serialized)
struct ProgramRunnerTests {
    @Test func collectsStandardOutputAndErrorAndTheStatus() throws {
        let result = try ProgramRunner.run("/bin/sh", ["sh", "-c", "echo out; echo err >&2; echo again; exit 3"])
        #expect(result.status == 3)
        #expect(result.output == "out\nerr\nagain\n")
    }

    @Test func standardInputIsEmpty() throws {
        let result = try ProgramRunner.run("/bin/cat", ["cat"])
        #expect(result == ProgramRunner.Result(status: 0, output: ""))
    }

    @Test func aKilledProgramIs128PlusTheSignal() throws {
        // SIGKILL: the program inherits the signal mask and ignored signals of the test process.
        let result = try ProgramRunner.run("/bin/sh", ["sh", "-c", "echo before; kill -KILL $$"])
        #expect(result.status == 137)
        #expect(result.output == "before\n")
    }

    @Test func aMissingProgramIsASystemError() {
        #expect(throws: SystemError("run", path: "/nonexistent/program", errno: .noSuchFileOrDirectory)) {
            try ProgramRunner.run("/nonexistent/program", ["program"])
        }
    }
}

@Suite(.serialized)
struct ReapTests {
    @Test func returnsAtTheDeadlineWhileTheChildRuns() throws {
        let pid = try startShell("exec sleep 5")
        defer {
            kill(pid, SIGKILL)
            _ = Children.wait(pid)
        }
        let start = MonotonicClock.milliseconds
        var ended: [Int32] = []
        let running = Children.reap([pid], until: start + 300, ended: { pid, _ in ended.append(pid) })
        let elapsed = MonotonicClock.milliseconds - start
        #expect(running == [pid])
        #expect(ended.isEmpty)
        #expect(elapsed >= 300)
        #expect(elapsed < 2_000)
    }

    @Test func returnsPromptlyWhenTheChildEnds() throws {
        let pid = try startShell("exec sleep 5")
        let start = MonotonicClock.milliseconds
        // Killed a little after the wait has begun.
        let killer = try startShell("sleep 0.2; kill -KILL \(pid)")
        var ended: [(Int32, WaitStatus)] = []
        let running = Children.reap([pid], until: start + 5_000, ended: { ended.append(($0, $1)) })
        let elapsed = MonotonicClock.milliseconds - start
        _ = Children.wait(killer)
        #expect(running.isEmpty)
        #expect(ended.count == 1)
        #expect(ended.first?.0 == pid)
        #expect(ended.first?.1 == .signaled(SIGKILL))
        #expect(elapsed >= 150)
        #expect(elapsed < 2_000)
    }

    @Test func reapsEveryChildAndReportsEach() throws {
        let pids = try [startShell("exit 1"), startShell("sleep 0.1; exit 2")]
        var statuses: [Int32: WaitStatus] = [:]
        let running = Children.reap(pids, until: MonotonicClock.milliseconds + 5_000, ended: { statuses[$0] = $1 })
        #expect(running.isEmpty)
        #expect(statuses == [pids[0]: .exited(1), pids[1]: .exited(2)])
    }

    @Test func stopsWhenWokenSaysSo() throws {
        let pid = try startShell("exec sleep 5")
        defer {
            kill(pid, SIGKILL)
            _ = Children.wait(pid)
        }
        let start = MonotonicClock.milliseconds
        var asked = 0
        let running = Children.reap([pid], until: start + 5_000, woken: {
            asked += 1
            return true
        })
        #expect(running == [pid])
        #expect(asked == 1)
        #expect(MonotonicClock.milliseconds - start < 1_000)
    }

    @Test func awaitExitWatchesThroughPidfds() throws {
        let pid = try startShell("exec sleep 5")
        let pidfd = Children.pidfd(pid)
        defer { if pidfd >= 0 { close(pidfd) } }
        let start = MonotonicClock.milliseconds
        #expect(Children.awaitExit([(pid, pidfd)], until: start + 200) == [0])
        Children.kill(pid, pidfd: pidfd, SIGKILL)
        #expect(Children.awaitExit([(pid, pidfd)], until: start + 5_000).isEmpty)
        #expect(MonotonicClock.milliseconds - start < 2_000)
        #expect(Children.wait(pid) == .signaled(SIGKILL))
    }
}
