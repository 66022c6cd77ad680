import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` (work that reports no progress of its own: formatting a large image, scanning a
/// tree). When stderr is a terminal and the work takes more than a second, a line such as
/// `creating big.ext3 (16 TiB): 12 s` is shown on stderr, rewritten each second and cleared at
/// the end; otherwise (a pipe, a log file, a test) nothing is printed.
func withProgress<Result>(_ what: String, _ body: () throws -> Result) throws -> Result {
    guard isatty(2) == 1 else { return try body() }
    let done = ConditionLock(false)
    let text = Escaped.terminal(what)
    let ticker = try JoinableThread {
        var tenths = 0
        var shown = false
        while !done.withLock({ $0 }) {
            usleep(100_000)
            tenths += 1
            if tenths >= 10, tenths % 10 == 0, !done.withLock({ $0 }) {
                writeStandardError("\r\(text): \(tenths / 10) s\u{1B}[K")
                shown = true
            }
        }
        if shown { writeStandardError("\r\u{1B}[K") }
    }
    let result = Swift.Result { try body() }
    done.update { $0 = true }
    ticker.join()
    return try result.get()
}

func writeStandardError(_ text: String) {
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
}
