import Testing
import Foundation

/// Whether we run under CI (`CI=true`): a missing prerequisite is then a failure, not a skip,
/// so every conditional trait below is enabled under CI and the test fails loudly if the
/// prerequisite is really missing.
public let underCI: Bool = ProcessInfo.processInfo.environment["CI"].map { $0 == "true" || $0 == "1" } ?? false

public var isRoot: Bool { geteuid() == 0 }

extension Trait where Self == ConditionTrait {
    /// The test needs root (loop devices, kernel mounts, creating users).
    public static var requiresRoot: Self {
        .enabled(if: underCI || geteuid() == 0, "needs root (loop devices, kernel mounts, runuser)")
    }

    /// The test needs `name` on PATH.
    public static func requires(executable name: String, _ why: String = "") -> Self {
        .enabled(if: underCI || which(name) != nil,
                 Comment(rawValue: "needs \(name) on PATH\(why.isEmpty ? "" : " (\(why))"); Scripts/install-deps installs it"))
    }
}

/// The full path of `name` on PATH (plus the sbin directories root tools live in), or nil.
public func which(_ name: String) -> String? {
    let path = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin:/usr/local/sbin"
    for dir in path.split(separator: ":") {
        let candidate = "\(dir)/\(name)"
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
}

extension Trait where Self == ConditionTrait {
    /// The test needs a working CRIU (`criu check` says "Looks good"; Scripts/install-deps
    /// builds CRIU 4.1.1 where the system's fails) and root.
    public static var requiresCRIU: Self {
        .enabled(if: underCI || (geteuid() == 0 && criuWorks),
                 "needs root and a criu whose 'criu check' passes; Scripts/install-deps builds CRIU 4.1.1")
    }
}

/// Whether `criu check` passes here (looked up as the toolkit does: /usr/local/sbin first).
public let criuWorks: Bool = {
    let criu = FileManager.default.isExecutableFile(atPath: "/usr/local/sbin/criu") ? "/usr/local/sbin/criu" : which("criu")
    guard let criu, let result = try? run([criu, "check"], timeout: 30) else { return false }
    return result.status == 0 && (result.stdout + result.stderr).contains("Looks good")
}()
