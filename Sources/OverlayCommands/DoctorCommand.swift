import ArgumentParser
import Checkpoint
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// `overlay doctor`: what works on this machine and what is missing.
public struct DoctorCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Say what works on this machine and what is missing, one line each.",
        discussion: """
        Looks at the runtimes (kernel loop and overlay mounts for root; user namespaces, \
        /dev/fuse, fuse2fs, fuse-overlayfs and squashfuse for an ordinary user), Apptainer or \
        Singularity on PATH, and process checkpoints (criu, its version, 'criu check', the \
        capabilities this user needs). Changes nothing. \
        Exit status: 0 when this user can run jobs some way (the native runtime or \
        Apptainer/Singularity), 1 when nothing can run. With --checkpoint, only the checkpoint \
        line: 0 when checkpoints work, 1 (saying what is missing) when not.
        """
    )
    public init() {}

    @Flag(help: "One JSON object on one line: {\"ok\":BOOL,\"checks\":[{\"name\",\"ok\",\"detail\"},...]}.")
    public var json = false

    @Flag(help: "Only whether process checkpoints work here (exit status 1 when not).")
    public var checkpoint = false

    public func run() throws {
        let report = checkpoint ? Doctor.checkpointOnly() : Doctor.examine()
        if json {
            print(report.json)
        } else {
            for check in report.checks {
                print("\(check.ok ? "ok     " : "missing") \(check.name): \(Escaped.terminal(check.detail))")
            }
            if !checkpoint { print(report.ok ? "summary: \(report.summary)" : "summary: nothing can run jobs here: \(report.summary)") }
        }
        if !report.ok { throw ExitCode(1) }
    }
}

/// The checks behind `overlay doctor`.
enum Doctor {
    struct Check: Equatable {
        var name: String
        var ok: Bool
        var detail: String
    }

    struct Report {
        var checks: [Check]
        var ok: Bool
        var summary: String

        var json: String {
            "{\"ok\":\(ok),\"summary\":\(quoted(summary)),\"checks\":["
                + checks.map { "{\"name\":\(quoted($0.name)),\"ok\":\($0.ok),\"detail\":\(quoted($0.detail))}" }.joined(separator: ",")
                + "]}"
        }
    }

    static func examine() -> Report {
        let root = geteuid() == 0
        var checks: [Check] = []
        let filesystems = readText("/proc/filesystems") ?? ""
        func has(_ fs: String) -> Bool {
            filesystems.split(separator: "\n").contains { $0.split(separator: "\t").last.map(String.init) == fs }
        }
        // Kernel mode (root).
        var kernelMissing: [String] = []
        if access("/dev/loop-control", F_OK) != 0 { kernelMissing.append("/dev/loop-control") }
        if !has("ext3") && !has("ext4") { kernelMissing.append("ext3/ext4 in the kernel") }
        if !has("overlay") { kernelMissing.append("overlay in the kernel (modprobe overlay)") }
        let kernelOK = root && kernelMissing.isEmpty
        checks.append(Check(name: "kernel mounts (root)", ok: kernelOK, detail:
            !kernelMissing.isEmpty ? "missing \(kernelMissing.joined(separator: ", "))"
                : root ? "loop devices, ext3 and overlayfs available; used when running as root"
                : "loop devices, ext3 and overlayfs available, but only root may use them (you are uid \(geteuid()))"))
        // FUSE mode (ordinary users).
        let userns = userNamespaces()
        checks.append(Check(name: "user namespaces", ok: userns.ok, detail: userns.detail))
        var fuseInfo = stat()
        let fuseOK: Bool
        let fuseDetail: String
        if stat("/dev/fuse", &fuseInfo) != 0 || (fuseInfo.st_mode & S_IFMT) != S_IFCHR {
            fuseOK = false
            fuseDetail = "/dev/fuse is missing (modprobe fuse; in a container, pass the device in)"
        } else {
            let mode = String(fuseInfo.st_mode & 0o777, radix: 8)
            fuseOK = access("/dev/fuse", R_OK | W_OK) == 0
            fuseDetail = fuseOK ? "/dev/fuse mode \(mode), usable by you"
                : "/dev/fuse mode \(mode) is not readable and writable by you: an administrator can chmod 0666 /dev/fuse"
        }
        checks.append(Check(name: "/dev/fuse", ok: fuseOK, detail: fuseDetail))
        let tools: [(String, String)] = [("fuse2fs", "job snapshots without root, and images the built-in driver does not write, such as ext4 (Debian: fuse2fs)"),
                                         ("fuse-overlayfs", "the stack without root on the host root, or where the kernel's overlay is refused (Debian: fuse-overlayfs)"),
                                         ("squashfuse", "SIF/squashfs containers without root (Debian: squashfuse)")]
        var found: [String: Bool] = [:]
        for (tool, use) in tools {
            let path = findExecutable(tool, alsoIn: ["/usr/sbin", "/sbin"])
            found[tool] = path != nil
            checks.append(Check(name: tool, ok: path != nil, detail: path.map { "\($0)" } ?? "not found on PATH: needed for \(use)"))
        }
        let fuseModeOK = userns.ok && fuseOK && found["fuse-overlayfs"] == true
        // Singularity/Apptainer.
        let singularity = ["apptainer", "singularity"].lazy.compactMap { name in findExecutable(name).map { (name, $0) } }.first
        checks.append(Check(name: "apptainer/singularity", ok: singularity != nil,
                            detail: singularity.map { "\($0.0) at \($0.1) (the default runtime when a container is given)" }
                                ?? "neither on PATH: jobs use the native runtime"))
        checks += checkpointChecks()
        let native = root ? kernelOK : fuseModeOK
        let ok = native || singularity != nil
        var ways: [String] = []
        if native { ways.append(root ? "the native runtime with kernel mounts" : "the native runtime with FUSE drivers") }
        if let singularity { ways.append(singularity.0) }
        let summary = ok ? "jobs can run with \(ways.joined(separator: " and "))"
            : root ? "the native runtime needs loop devices, ext3 and overlayfs, or install Apptainer"
            : "the native runtime needs user namespaces, /dev/fuse and fuse-overlayfs, or install Apptainer, or run as root"
        return Report(checks: checks, ok: ok, summary: summary)
    }

    static func checkpointOnly() -> Report {
        let status = CRIUStatus.current
        return Report(checks: [checkpointLine(status)], ok: status.problem == nil,
                      summary: status.problem == nil ? "checkpoints work" : "checkpoints do not work")
    }

    /// criu present, its version, `criu check`, the capabilities; then one line for the whole.
    static func checkpointChecks() -> [Check] {
        let status = CRIUStatus.current
        var checks: [Check] = []
        checks.append(Check(name: "criu", ok: status.path != nil, detail: status.path.map { "\($0), version \(status.version ?? "unknown")" }
            ?? "not installed: Scripts/install-deps builds CRIU 4.1.1, or install criu >= 4.1"))
        if status.path != nil {
            checks.append(Check(name: "criu check", ok: status.checkPassed,
                                detail: status.checkPassed ? "Looks good" : "fails: \(status.checkOutput.isEmpty ? "no output" : status.checkOutput)"))
            checks.append(Check(name: "criu capabilities", ok: status.isRoot || status.hasCheckpointRestoreCapability,
                                detail: status.isRoot ? "running as root"
                                    : status.hasCheckpointRestoreCapability ? "CAP_CHECKPOINT_RESTORE on the binary (CRIU's unprivileged mode)"
                                    : "not root, and no CAP_CHECKPOINT_RESTORE on the binary (setcap cap_checkpoint_restore+eip \(status.path!))"))
        }
        checks.append(checkpointLine(status))
        return checks
    }

    static func checkpointLine(_ status: CRIUStatus) -> Check {
        if let problem = status.problem { return Check(name: "checkpoints", ok: false, detail: problem) }
        return Check(name: "checkpoints", ok: true,
                     detail: "criu \(status.version ?? "") at \(status.path ?? ""), criu check passes, \(status.isRoot ? "as root" : "unprivileged mode")")
    }

    /// Whether this user may make a user namespace: the limits (user.max_user_namespaces,
    /// Debian's kernel.unprivileged_userns_clone, Ubuntu's AppArmor restriction).
    static func userNamespaces() -> (ok: Bool, detail: String) {
        if let max = readText("/proc/sys/user/max_user_namespaces").flatMap({ Int($0.filter { $0.isNumber }) }), max == 0 {
            return (false, "user.max_user_namespaces is 0: an administrator can raise it (sysctl user.max_user_namespaces=15000)")
        }
        if geteuid() != 0, readText("/proc/sys/kernel/unprivileged_userns_clone")?.hasPrefix("0") == true {
            return (false, "kernel.unprivileged_userns_clone is 0: an administrator can set it to 1")
        }
        if geteuid() != 0, readText("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")?.hasPrefix("1") == true {
            return (false, "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)")
        }
        return (true, "allowed (what the native runtime uses for ordinary users)")
    }

    static func readText(_ path: String) -> String? {
        guard let fd = try? OwnedDescriptor(opening: path, O_RDONLY), let bytes = try? IO.readAll(fd.rawValue) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func quoted(_ text: String) -> String { JSONText.quoted(text) }
}
