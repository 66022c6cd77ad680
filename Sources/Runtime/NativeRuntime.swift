import LinuxSupport
import Overlay

#if canImport(Glibc)
import Glibc
#endif

/// The embedded runtime: kernel loop devices, ext3 and overlayfs in a private mount namespace as
/// root; `fuse2fs`, `squashfuse` and the kernel's overlayfs (`userxattr`) or `fuse-overlayfs` in a
/// user namespace as an ordinary user.
///
/// This process checks the images, takes their locks and holds them for the whole run, then
/// forks the setup process (``NativeSetup``) that makes the namespace and the mounts and
/// runs the job. Signals this process gets are passed on; the setup process dies with it
/// (parent-death signal), which takes the namespace, the mounts and the loop devices with it.
public struct NativeRuntime: Runtime {
    public init() {}

    /// A runtime that rebuilds the job's mounts and restores the processes of the checkpoint
    /// in `directory` into them instead of starting the job's command (see Setup+Restore.swift).
    public init(restoringFrom directory: String) { restoreFrom = directory }

    /// See ``init(restoringFrom:)``.
    public var restoreFrom: String?

    public var name: String { "native" }

    public func plan(for job: Job) throws -> [String] {
        try prepare(job).lines
    }

    public func run(_ job: Job) throws -> Int32 {
        var plan = try prepare(job)
        plan.restoreFrom = restoreFrom
        // Locks first, so a refusal changes nothing; held until the setup process has gone.
        var locks: [ImageLock] = []
        for spec in job.stack.specs {
            locks.append(try ImageLock.acquire(spec.path, spec.isWritable ? .write : .read))
        }
        defer { for lock in locks { lock.release() } }
        plan.lockDescriptors = locks.map(\.fileDescriptor)
        let status: Int32
        do {
            status = try NativeSetup.start(plan)
        } catch {
            Self.settle(plan)
            throw error
        }
        Self.settle(plan)
        if let writable = job.stack.writable, let notice = ImageFullness.notice(writable.path) {
            IO.writeLine("warning: " + notice)
        }
        return status
    }

    /// Once the setup process has gone (the job ended, failed, or was interrupted): waits for
    /// the loop devices, then rewrites the writable image's whiteouts (NativeRuntime+Whiteouts).
    static func settle(_ plan: NativePlan) {
        if plan.mode == .kernel { waitForLoopDevices(of: plan.images.map(\.path) + [plan.squashfs?.path].compactMap { $0 }) }
        normalizeWhiteouts(after: plan)
    }

    /// Checks the images and the prerequisites, and works out the plan.
    func prepare(_ job: Job) throws -> NativePlan {
        let mode: NativePlan.Mode = geteuid() == 0 ? .kernel : .fuse
        let identity = Self.invokingIdentity()
        for spec in job.stack.specs {
            let result = try ImageCheck.validate(spec)
            try Self.checkAccess(spec, result, identity: identity, mode: mode)
        }
        let plan = try NativePlan.make(for: job, mode: mode, identity: identity, environment: currentEnvironment())
        if mode == .fuse { try Self.checkUnprivilegedPrerequisites(job, plan, overlay: plan.userOverlay ?? .fuseOverlayfs) }
        return plan
    }

    /// The user the job runs as: the one who ran sudo (`SUDO_UID`/`SUDO_GID`) when root was
    /// reached through it, else this process's own ids.
    public static func invokingIdentity() -> NativePlan.Identity {
        if getuid() == 0, let uidText = environmentValue("SUDO_UID"), let uid = UInt32(uidText), uid != 0 {
            let gid = environmentValue("SUDO_GID").flatMap(UInt32.init) ?? uid
            var groups: [UInt32] = [gid]
            if let entry = getpwuid(uid) {
                var count: Int32 = 64
                var buffer = [gid_t](repeating: 0, count: Int(count))
                if getgrouplist(entry.pointee.pw_name, gid, &buffer, &count) >= 0 {
                    groups = Array(buffer.prefix(Int(count)))
                }
            }
            return .init(uid: uid, gid: gid, groups: groups, change: true)
        }
        return .init(uid: getuid(), gid: getgid(), groups: [], change: false)
    }

    /// The writable image must be the user's: its `upper/` belongs to them (root may write any),
    /// and an ordinary user must be able to open the file itself.
    static func checkAccess(_ spec: OverlaySpec, _ result: ImageCheck.Result, identity: NativePlan.Identity,
                            mode: NativePlan.Mode) throws {
        if spec.isWritable, identity.uid != 0, let upper = result.upper, upper.uid != identity.uid {
            throw RuntimeError.failed("overlay '\(spec.path)' belongs to \(userName(upper.uid)) (its upper/ directory), not to you: use it read-only with '\(spec.path):ro', or make your own with create-overlay")
        }
        if mode == .fuse, access(spec.path, spec.isWritable ? (R_OK | W_OK) : R_OK) != 0 {
            throw RuntimeError.failed("overlay '\(spec.path)' is owned by \(userName(result.fileOwner)) and you cannot \(spec.isWritable ? "write" : "read") it: \(spec.isWritable ? "use it read-only with '\(spec.path):ro', or " : "")ask its owner to share it (chmod)")
        }
    }

    static func userName(_ uid: UInt32) -> String {
        if let entry = getpwuid(uid) { return "user \(String(cString: entry.pointee.pw_name))" }
        return "uid \(uid)"
    }

    /// What an ordinary user needs: user namespaces, /dev/fuse, and the FUSE drivers.
    static func checkUnprivilegedPrerequisites(_ job: Job, _ plan: NativePlan, overlay: NativePlan.UserOverlay) throws {
        // In the order they mount; each tool comes in the Debian package of its name.
        var tools = plan.needsFuse2fs ? ["fuse2fs"] : []
        switch job.container {
        case .sif, .squashfs: tools.append("squashfuse")
        case .host, .sandbox: break
        }
        // The kernel's overlay, when asked for alone, needs no driver.
        if overlay != .kernel { tools.append("fuse-overlayfs") }
        for tool in tools where findExecutable(tool) == nil {
            let package = tool
            throw RuntimeError.unavailable("\(tool) not found: running without root needs it (install the \(package) package), or run as root")
        }
        if let text = readSmallFile("/proc/sys/user/max_user_namespaces"), Int(text) == 0 {
            throw RuntimeError.unavailable("user namespaces are disabled (user.max_user_namespaces = 0): running without root needs them; an administrator can enable them with sysctl -w user.max_user_namespaces=15000, or run as root")
        }
        if let text = readSmallFile("/proc/sys/kernel/unprivileged_userns_clone"), Int(text) == 0 {
            throw RuntimeError.unavailable("user namespaces are disabled for ordinary users (kernel.unprivileged_userns_clone = 0): an administrator can enable them with sysctl -w kernel.unprivileged_userns_clone=1, or run as root")
        }
        if access("/dev/fuse", R_OK | W_OK) != 0 {
            throw RuntimeError.unavailable("/dev/fuse is not usable (\(Errno.last)): running without root needs FUSE; an administrator can load the fuse module and make /dev/fuse mode 0666, or run as root")
        }
    }

    static func readSmallFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = read(fd, &buffer, buffer.count)
        guard count > 0 else { return nil }
        return String(decoding: buffer[0..<count], as: UTF8.self).trimmingWhitespace
    }

    /// Loop devices with autoclear go when their last user does; give the kernel a moment so
    /// that none of the run's is still listed when we return.
    static func waitForLoopDevices(of paths: [String]) {
        for _ in 0..<200 {
            if loopDevices(backing: paths).isEmpty { return }
            usleep(10_000)
        }
    }

    /// Loop devices (`loopN`) whose backing file is one of `paths`.
    static func loopDevices(backing paths: [String]) -> [String] {
        guard let dir = opendir("/sys/block") else { return [] }
        defer { closedir(dir) }
        var found: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasPrefix("loop") else { continue }
            if let backing = readSmallFile("/sys/block/\(name)/loop/backing_file"), paths.contains(backing) {
                found.append(name)
            }
        }
        return found
    }
}

extension String {
    var trimmingWhitespace: String {
        var scalars = Substring(self)
        while let last = scalars.last, last.isWhitespace { scalars = scalars.dropLast() }
        while let first = scalars.first, first.isWhitespace { scalars = scalars.dropFirst() }
        return String(scalars)
    }
}
