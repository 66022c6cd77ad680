import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The criu program on this machine: where it is, its version, whether `criu check` passes and
/// whether this user may run it (root, or the file capability CAP_CHECKPOINT_RESTORE on the
/// binary for CRIU's unprivileged mode).
public struct CRIUStatus: Sendable, Equatable {
    /// The binary used: /usr/local/sbin/criu (where Scripts/install-deps puts a built one)
    /// first, then PATH, /usr/sbin and /sbin. nil when there is none.
    public var path: String?
    /// `criu --version`'s version number ("4.1.1"), when it answered.
    public var version: String?
    /// Whether `criu check` (with `--unprivileged` for an ordinary user) said "Looks good".
    public var checkPassed: Bool
    /// The last line `criu check` printed (its reason when it failed).
    public var checkOutput: String
    public var isRoot: Bool
    /// The binary carries CAP_CHECKPOINT_RESTORE in its permitted file capabilities.
    public var hasCheckpointRestoreCapability: Bool

    /// Nil when checkpoints can be taken here; else one line saying what is missing.
    public var problem: String? {
        guard let path else {
            return "criu is not installed (looked in /usr/local/sbin and on PATH): Scripts/install-deps builds CRIU 4.1.1, or install criu >= 4.1"
        }
        if !isRoot && !hasCheckpointRestoreCapability {
            return "\(path) lacks CAP_CHECKPOINT_RESTORE, which an ordinary user needs: run as root, or have an administrator run 'setcap cap_checkpoint_restore+eip \(path)'"
        }
        if !checkPassed {
            let said = checkOutput.isEmpty ? "no output" : Escaped.terminal(checkOutput)
            return "'\(path) check' fails on this kernel (\(said)); CRIU >= 4.1 is needed on kernels >= 6.13 (Scripts/install-deps builds 4.1.1)"
        }
        return nil
    }

    /// CRIU's unprivileged mode: an ordinary user with the capability on the binary.
    public var unprivileged: Bool { !isRoot }

    /// Looks at the machine (runs `criu --version` and, with `check`, `criu check`, which
    /// takes about a tenth of a second; without it, ``checkPassed`` is assumed).
    public static func probe(check runCheck: Bool = true) -> CRIUStatus {
        let root = geteuid() == 0
        guard let path = locate() else {
            return CRIUStatus(path: nil, version: nil, checkPassed: false, checkOutput: "", isRoot: root,
                              hasCheckpointRestoreCapability: false)
        }
        let version = (try? ProgramRunner.run(path, [path, "--version"])).flatMap { result in
            result.status == 0 ? parseVersion(result.output) : nil
        }
        guard runCheck else {
            return CRIUStatus(path: path, version: version, checkPassed: true, checkOutput: "", isRoot: root,
                              hasCheckpointRestoreCapability: hasCapability(path, bit: capCheckpointRestore))
        }
        let check = try? ProgramRunner.run(path, [path, "check"] + (root ? [] : ["--unprivileged"]))
        let lines = (check?.output ?? "").split(separator: "\n").map { String($0).trimmingWhitespace }.filter { !$0.isEmpty }
        let passed = check?.status == 0 && lines.contains { $0.contains("Looks good") }
        return CRIUStatus(path: path, version: version, checkPassed: passed, checkOutput: lines.last ?? "",
                          isRoot: root, hasCheckpointRestoreCapability: hasCapability(path, bit: capCheckpointRestore))
    }

    /// Probed once per process.
    public static let current: CRIUStatus = probe()

    /// Without `criu check` (a dump or restore that fails runs it to say why), once per process.
    static let quick: CRIUStatus = probe(check: false)

    static let capCheckpointRestore = 40

    /// The criu binary, as ``path`` describes.
    public static func locate() -> String? {
        if isExecutableFile("/usr/local/sbin/criu") { return "/usr/local/sbin/criu" }
        return findExecutable("criu", alsoIn: ["/usr/sbin", "/sbin"])
    }

    /// "Version: 4.1.1" (first line of `criu --version`) -> "4.1.1".
    static func parseVersion(_ output: String) -> String? {
        for line in output.split(separator: "\n") where line.hasPrefix("Version:") {
            return line.dropFirst("Version:".count).trimmingWhitespace
        }
        return nil
    }

    /// Whether the permitted file capabilities of `path` (its security.capability extended
    /// attribute, vfs_cap_data version 2 or 3: little-endian words magic, permitted[0],
    /// inheritable[0], permitted[1], inheritable[1]) hold capability `bit`.
    public static func hasCapability(_ path: String, bit: Int) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 64)
        // The capability is on the file itself, not on a symlink to it.
        guard let resolved = realpath(path, nil) else { return false }
        defer { free(resolved) }
        let count = buffer.withUnsafeMutableBytes { FileCalls.lgetxattr(resolved, "security.capability", $0.baseAddress, $0.count) }
        guard count >= 20 else { return false }
        func word(_ index: Int) -> UInt32 {
            (0..<4).reduce(UInt32(0)) { $0 | UInt32(buffer[index * 4 + $1]) << (8 * $1) }
        }
        let revision = word(0) & 0xFF00_0000
        guard revision == 0x0200_0000 || revision == 0x0300_0000 else { return false }
        let permitted = bit < 32 ? word(1) : word(3)
        return permitted & (1 << UInt32(bit % 32)) != 0
    }
}

extension StringProtocol {
    var trimmingWhitespace: String {
        let scalars = unicodeScalars.drop { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }
        var end = scalars.endIndex
        while end > scalars.startIndex {
            let before = scalars.index(before: end)
            let c = scalars[before]
            if c == " " || c == "\t" || c == "\r" || c == "\n" { end = before } else { break }
        }
        return String(String.UnicodeScalarView(scalars[scalars.startIndex..<end]))
    }
}
