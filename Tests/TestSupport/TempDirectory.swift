import Foundation

/// A fresh directory under /tmp, removed (with everything in it) when the value goes away.
/// World-searchable (0755) so tests that switch to an ordinary user can reach files in it.
public final class TempDirectory: @unchecked Sendable {
    public let url: URL
    public var path: String { url.path }

    public init(_ prefix: String = "overlay-test") throws {
        let base = ProcessInfo.processInfo.environment["OVERLAY_TEST_TMP"] ?? "/tmp"
        let template = "\(base)/\(prefix).XXXXXX"
        var bytes = Array(template.utf8CString)
        guard let made = mkdtemp(&bytes) else { throw CocoaError(.fileWriteUnknown) }
        url = URL(fileURLWithPath: String(cString: made))
        chmod(url.path, 0o755)
    }

    public func file(_ name: String) -> String { url.appendingPathComponent(name).path }

    /// Names of the entries directly inside, sorted.
    public func listing() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: path).sorted()
    }

    deinit { try? FileManager.default.removeItem(at: url) }
}
