import ImageDriver
import LinuxSupport
import Overlay

#if canImport(Glibc)
import Glibc
#endif

/// Everything the native runtime mounts and runs for one job, worked out before anything is
/// touched: `--dry-run` prints it, and the setup process (a fresh process in its own mount
/// namespace) carries it out. Paths are absolute.
///
/// Layout under ``staging`` (a tmpfs private to the run's mount namespace):
///
///     session/     the topmost lower layer: empty mount points for the binds, so no bind
///                  writes a directory into an image or needs one in the container
///     image0...    each overlay image, mounted (kernel ext3, the built-in driver or fuse2fs)
///     container/   the container's squashfs (a SIF's system partition or a squashfs image)
///     root/        the overlay: the job's root, with the binds on it
///     host/        (FUSE, when the container root holds the staging area: the host root) a
///                  recursive bind of `/` made before anything is mounted here, with this
///                  tmpfs taken off it: fuse-overlayfs reads its lowest layer through the VFS and
///                  crosses mount points, so given `/` itself it would reach the run's own FUSE
///                  mounts (its own included) and wait on itself for ever. The kernel's overlay
///                  does not cross mount points in a layer and never reads it.
///
/// The stack in FUSE mode (``UserOverlay``): the kernel's overlayfs with `userxattr` when the
/// kernel takes it, else fuse-overlayfs. The kernel refuses, in a user namespace,
/// - `/` as a layer: its submounts (/proc, /dev, ...) are locked, and a layer must be one whole
///   mount ("failed to clone lowerpath"), so over the host root the plan says fuse-overlayfs;
/// - an upper directory on FUSE without RENAME_WHITEOUT, d_type and xattrs ("upper fs missing
///   required features"): the built-in driver's writable mode has them; fuse2fs 1.47.0 (libfuse
///   2.9) has no rename flags, so a writable stack on fuse2fs (see ``writableDriver``) falls
///   back to fuse-overlayfs (the failed attempt leaves an empty `work/work`);
/// which leaves stacks on a SIF, squashfs or sandbox container to the kernel.
public struct NativePlan: Codable, Equatable, Sendable {
    /// Kernel mounts as root; FUSE drivers in a user namespace as an ordinary user.
    public enum Mode: String, Codable, Sendable { case kernel, fuse }

    /// What stacks the layers in FUSE mode. `OVERLAY_FUSE_STACK` chooses: `auto` (the default:
    /// the kernel's overlay where it may work, falling back to fuse-overlayfs when the mount
    /// fails), `kernel` (the kernel's overlay, or an error) or `fuse-overlayfs`.
    public enum UserOverlay: String, Codable, Sendable {
        /// The kernel's overlayfs (`userxattr`); fuse-overlayfs when the mount fails.
        case kernelElseFuseOverlayfs = "auto"
        /// The kernel's overlayfs, no fallback.
        case kernel
        case fuseOverlayfs = "fuse-overlayfs"
    }

    /// What mounts an image in FUSE mode. `OVERLAY_IMAGE_DRIVER` chooses: `builtin` (the
    /// default: this toolkit's own driver, ``ImageDriver``) or `fuse2fs`; a writable image may
    /// still be fuse2fs's (``writableDriver``).
    public enum ReadOnlyDriver: String, Codable, Sendable {
        case builtin
        case fuse2fs
    }

    public struct ImageMount: Codable, Equatable, Sendable {
        public var path: String
        public var readOnly: Bool
        public var mountPoint: String
    }

    /// A squashfs to mount read-only, at `offset` (a SIF partition) for `size` bytes (0: all).
    public struct SquashfsMount: Codable, Equatable, Sendable {
        public var path: String
        public var offset: UInt64
        public var size: UInt64
        public var mountPoint: String
    }

    public struct BindMount: Codable, Equatable, Sendable {
        public var source: String
        public var destination: String
        public var readOnly: Bool
        public var isDirectory: Bool
    }

    /// Who the job runs as.
    public struct Identity: Codable, Equatable, Sendable {
        public var uid: UInt32
        public var gid: UInt32
        /// Supplementary groups (kernel mode, when the ids change).
        public var groups: [UInt32]
        /// Whether the setup process must switch to these ids (root running for a sudo user).
        public var change: Bool
    }

    public var mode: Mode
    /// FUSE mode: what stacks the layers (nil in kernel mode).
    public var userOverlay: UserOverlay?
    public var staging: String
    public var images: [ImageMount]
    public var squashfs: SquashfsMount?
    /// FUSE mode: the driver of the read-only images.
    public var readOnlyDriver: ReadOnlyDriver?
    /// FUSE mode, with a writable image: its driver. The built-in one (its writable mode) where
    /// the read-only images have it, unless the image has ext2 features it does not write
    /// (it writes those of an ext3 image as this toolkit and `mke2fs -t ext3` make them) or
    /// the run takes job snapshots (their cut works through fuse2fs: see ``Fuse2fsFlush``).
    public var writableDriver: ReadOnlyDriver?
    /// FUSE mode: the executable that is the built-in driver (this one, with
    /// ``ImageDriver/argument``).
    public var driverExecutable: String?
    /// The container root: `/`, a sandbox directory, or the squashfs mount point.
    public var containerRoot: String
    /// Where `/` is bound recursively (without the staging tmpfs) for fuse-overlayfs to read
    /// the container root from, when that root holds the staging area (see the layout).
    public var hostCopy: String?
    /// Overlay lower directories, topmost first (session, read-only images, container root).
    public var lowerDirs: [String]
    public var upperDir: String?
    public var workDir: String?
    /// The private scratch layer on the run's tmpfs (`upper/` and `work/`), when the job may
    /// write but has no writable overlay (``Job/scratch``).
    public var scratch: String?
    public var root: String
    public var session: String
    public var binds: [BindMount]
    /// The job's argv; for an interactive shell, the shells to try (the first present runs).
    public var command: [String]
    public var interactive: Bool
    public var workingDirectory: String
    public var identity: Identity
    /// Variables set for the job on top of the inherited environment (the shell's prompt).
    public var environment: [String: String]
    /// Descriptors of the image locks the tool holds; the setup process keeps them open so the
    /// locks outlive the tool by as long as the mounts do, and closes them on exec.
    public var lockDescriptors: [Int32]
    /// A checkpoint directory (see Checkpoint) whose processes take the place of the command:
    /// restored into the freshly built mounts instead of starting the job.
    public var restoreFrom: String?
    /// Snapshots of the running job (`--snapshot-to`), taken by the setup process.
    public var jobSnapshots: JobSnapshotSettings?
    /// Write end of the pipe on which the setup process reports its own failure (one line).
    public var reportDescriptor: Int32 = -1

    /// The overlayfs mount options (kernel) or fuse-overlayfs options.
    public var overlayOptions: String {
        var options = "lowerdir=" + lowerDirs.map(Self.escapeOverlayPath).joined(separator: ":")
        if let upperDir, let workDir {
            options += ",upperdir=\(Self.escapeOverlayPath(upperDir)),workdir=\(Self.escapeOverlayPath(workDir))"
        }
        return options
    }

    /// The options of the kernel's overlay in a user namespace: the container root itself as the
    /// lowest layer (it does not cross mount points, so it needs no copy of the host root),
    /// and `userxattr` (`user.overlay.*` xattrs, as a user namespace may not set `trusted.*`).
    public var userKernelOverlayOptions: String {
        var options = "lowerdir=" + (lowerDirs.dropLast() + [containerRoot]).map(Self.escapeOverlayPath).joined(separator: ":")
        if let upperDir, let workDir {
            options += ",upperdir=\(Self.escapeOverlayPath(upperDir)),workdir=\(Self.escapeOverlayPath(workDir))"
        }
        return options + ",userxattr"
    }

    /// The options of fuse2fs. The kernel caches names, attributes (an hour; a miss too) and
    /// file contents across opens: only this run's overlay changes an image while it is
    /// mounted (the locks see to that), and it changes it through this mount, so the kernel's
    /// copies never go stale. Measured over 20,000 files: see `Scripts/bench run`.
    public func fuse2fsOptions(_ image: ImageMount) -> String {
        "fakeroot" + (image.readOnly ? ",ro" : "") + Self.fuse2fsCaching
    }

    static let fuse2fsCaching = ",kernel_cache,entry_timeout=3600,attr_timeout=3600,negative_timeout=3600"

    /// The command that mounts `image` in FUSE mode, in the foreground: the built-in driver
    /// (unless `OVERLAY_IMAGE_DRIVER=fuse2fs`), read-only or writable; fuse2fs for a writable
    /// image the built-in driver does not write (see ``writableDriver``).
    public func fuseImageCommand(_ image: ImageMount) -> [String] {
        if readOnlyDriver == .builtin, let driverExecutable {
            if image.readOnly { return [driverExecutable, ImageDriver.argument, image.path, image.mountPoint] }
            if writableDriver == .builtin { return [driverExecutable, ImageDriver.writableArgument, image.path, image.mountPoint] }
        }
        return ["fuse2fs", image.path, image.mountPoint, "-f", "-o", fuse2fsOptions(image)]
    }

    /// Whether any image is mounted by fuse2fs (FUSE mode).
    public var needsFuse2fs: Bool {
        images.contains { fuseImageCommand($0).first == "fuse2fs" }
    }

    /// The options of fuse-overlayfs: the layers, read-only when no layer is writable, and
    /// - noacl: squashfuse answers ACL queries with EOPNOTSUPP, which would fail every exec;
    /// - static_nlink: a directory's link count is 1 (as on btrfs; `find` knows it means
    ///   "unknown"), so that a stat of a directory does not make fuse-overlayfs read the whole
    ///   directory in every layer to count its subdirectories: without it, starting /bin/true
    ///   over the host root read all of /usr/bin and /usr/lib/x86_64-linux-gnu, and each bind
    ///   all of its mount point (/tmp, /dev).
    /// - writeback=0: no write-back cache in the kernel, so a write to a full image fails with
    ///   ENOSPC at write() (with it, every write succeeded into the page cache, a file could
    ///   grow past the image's size, and only fsync or close failed: `dd` never ended).
    public var fuseOverlayOptions: String {
        (upperDir == nil ? "ro," : "") + "noacl,static_nlink,writeback=0," + overlayOptions
    }

    /// overlayfs splits its options at `,` and lower directories at `:`; `\` escapes them.
    static func escapeOverlayPath(_ path: String) -> String {
        var out = ""
        for c in path {
            if c == "," || c == ":" || c == "\\" { out.append("\\") }
            out.append(c)
        }
        return out
    }

    /// The plan as `--dry-run` prints it: one step a line, in the order they happen.
    public var lines: [String] {
        var lines: [String] = []
        let q = ShellQuote.quote
        switch mode {
        case .kernel: lines.append("unshare mount namespace (private), tmpfs on \(staging)")
        case .fuse: lines.append("unshare user namespace (uid \(identity.uid) -> \(identity.uid), gid \(identity.gid) -> \(identity.gid)) and mount namespace (private), tmpfs on \(staging)")
        }
        if let hostCopy {
            lines.append("mount --rbind / \(hostCopy), umount -l \(hostCopy)\(staging)")
        }
        for image in images {
            switch mode {
            case .kernel:
                lines.append("mount -t ext3 -o loop,autoclear,\(image.readOnly ? "ro" : "rw"),nosuid,nodev,errors=remount-ro \(q(image.path)) \(image.mountPoint)")
            case .fuse:
                let command = fuseImageCommand(image)
                if command.first == "fuse2fs" {
                    lines.append("fuse2fs \(q(image.path)) \(image.mountPoint) -o \(fuse2fsOptions(image))")
                } else {
                    lines.append(ShellQuote.line(command) + (image.readOnly ? " (the built-in read-only driver)" : " (the built-in writable driver)"))
                }
            }
        }
        if let squashfs {
            switch mode {
            case .kernel:
                let range = squashfs.offset > 0 ? ",offset=\(squashfs.offset),sizelimit=\(squashfs.size)" : ""
                lines.append("mount -t squashfs -o loop,autoclear,ro\(range) \(q(squashfs.path)) \(squashfs.mountPoint)")
            case .fuse:
                let range = squashfs.offset > 0 ? " -o offset=\(squashfs.offset)" : ""
                lines.append("squashfuse\(range) \(q(squashfs.path)) \(squashfs.mountPoint)")
            }
        }
        if let scratch {
            lines.append("mkdir \(scratch)/upper \(scratch)/work (the scratch layer, on the tmpfs: thrown away at the end)")
        }
        let readOnly = upperDir == nil ? "ro," : ""
        switch mode {
        case .kernel: lines.append("mount -t overlay -o \(readOnly)\(q(overlayOptions)) overlay \(root)")
        case .fuse:
            let fuseOverlayfs = "fuse-overlayfs -o \(q(fuseOverlayOptions)) \(root)"
            let kernel = "mount -t overlay -o \(readOnly)\(q(userKernelOverlayOptions)) overlay \(root)"
            switch userOverlay ?? .fuseOverlayfs {
            case .kernelElseFuseOverlayfs: lines.append("\(kernel), else (the kernel refuses it) \(fuseOverlayfs)")
            case .kernel: lines.append(kernel)
            case .fuseOverlayfs: lines.append(fuseOverlayfs)
            }
        }
        for bind in binds {
            lines.append("mount --rbind\(bind.readOnly ? " -o ro" : "") \(q(bind.source)) \(q(root + bind.destination))")
        }
        lines.append("unshare PID namespace, mount -t proc proc \(root)/proc")
        let who = identity.change ? "uid \(identity.uid) gid \(identity.gid)" : "uid \(identity.uid)"
        let run = interactive ? "the first of \(command.joined(separator: ", ")) (interactive)" : ShellQuote.line(command)
        lines.append("chroot \(root), cd \(q(workingDirectory)), as \(who): \(run)")
        if let snapshots = jobSnapshots {
            let every = snapshots.everySeconds.map { "every \($0) s, " } ?? ""
            let keep = snapshots.keep.map { ", keeping the newest \($0)" } ?? ""
            let writable = images.first { !$0.readOnly }?.mountPoint ?? ""
            let cut = mode == .kernel
                ? "syncfs + FIFREEZE \(writable), copy the image (reflink, else its used blocks), FITHAW"
                : "syncfs \(root) and \(writable), fsync \(writable)/\(Fuse2fsFlush.relativePath) (fuse2fs writes the image out), copy the image (reflink, else its used blocks), mark the copy clean"
            lines.append("job snapshots to \(q(snapshots.directory)) (\(every)on SIGUSR1, and on SIGTERM before passing it on\(keep)): SIGSTOP the job's processes, \(cut), SIGCONT")
            if !snapshots.include.isEmpty || !snapshots.exclude.isEmpty {
                let regexes = snapshots.include.map { "--snapshot-include \(q($0))" } + snapshots.exclude.map { "--snapshot-exclude \(q($0))" }
                lines.append("then, while the job goes on, a new image holding only the files that \(regexes.joined(separator: " ")) take, built from the copy; the copy is dropped")
            }
        }
        return lines
    }
}

extension NativePlan {
    /// Where the run's private tmpfs goes: a directory of our own when it exists (root makes
    /// it), else /run, hidden only inside the run's mount namespace.
    static func stagingDirectory(mode: Mode) -> String {
        let own = "/run/overlay-toolkit"
        if mode == .kernel { mkdir(own, 0o755) }
        var info = stat()
        if stat(own, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR { return own }
        return "/run"
    }

    /// Builds the plan for `job`, as user `identity`. Checks nothing on disk beyond resolving
    /// paths and reading the SIF header (``NativeRuntime`` validates the images first).
    static func make(for job: Job, mode: Mode, identity: Identity,
                     environment: [String: String]) throws -> NativePlan {
        let staging = stagingDirectory(mode: mode)
        let session = staging + "/session"
        let root = staging + "/root"
        var images: [ImageMount] = []
        for (index, spec) in job.stack.specs.enumerated() {
            images.append(ImageMount(path: try absolute(spec.path, what: "overlay"), readOnly: !spec.isWritable,
                                     mountPoint: "\(staging)/image\(index)"))
        }
        var squashfs: SquashfsMount?
        let containerRoot: String
        switch job.container {
        case .host:
            containerRoot = "/"
        case let .sandbox(path):
            containerRoot = try absolute(path, what: "container")
        case let .squashfs(path):
            squashfs = SquashfsMount(path: try absolute(path, what: "container"), offset: 0, size: 0,
                                     mountPoint: staging + "/container")
            containerRoot = staging + "/container"
        case let .sif(path):
            let absolutePath = try absolute(path, what: "container")
            let partition = try SIF.systemPartition(of: absolutePath)
            squashfs = SquashfsMount(path: absolutePath, offset: partition.offset, size: partition.size,
                                     mountPoint: staging + "/container")
            containerRoot = staging + "/container"
        }
        // Later read-only overlays sit above earlier ones; the writable one is the upper dir.
        var lowerDirs = [session]
        for spec in job.stack.readOnlyTopmostFirst {
            let index = job.stack.specs.firstIndex(of: spec)!
            lowerDirs.append(images[index].mountPoint + "/upper")
        }
        // fuse-overlayfs crosses mount points in its layers: when the container root holds the
        // staging area, it reads a copy of the mount tree made before the run mounts anything.
        var hostCopy: String?
        if mode == .fuse, containerRoot == "/" || staging.hasPrefix(containerRoot + "/") {
            hostCopy = staging + "/host"
            lowerDirs.append(staging + "/host" + (containerRoot == "/" ? "" : containerRoot))
        } else {
            lowerDirs.append(containerRoot)
        }
        let writable = job.stack.writable != nil ? images[0] : nil
        let scratch = writable == nil && job.scratch ? staging + "/scratch" : nil
        var userOverlay: UserOverlay?
        var readOnlyDriver: ReadOnlyDriver?
        var writableDriver: ReadOnlyDriver?
        var driverExecutable: String?
        if mode == .fuse {
            let asked = environment["OVERLAY_FUSE_STACK"].map { $0.isEmpty ? "auto" : $0 } ?? "auto"
            guard let chosen = UserOverlay(rawValue: asked) else {
                throw RuntimeError.failed("OVERLAY_FUSE_STACK is '\(asked)': give auto, kernel or fuse-overlayfs")
            }
            // The host root is never a layer of the kernel's overlay in a user namespace.
            userOverlay = chosen == .kernelElseFuseOverlayfs && containerRoot == "/" ? .fuseOverlayfs : chosen
            let driver = environment["OVERLAY_IMAGE_DRIVER"].map { $0.isEmpty ? "builtin" : $0 } ?? "builtin"
            guard let driverChoice = ReadOnlyDriver(rawValue: driver) else {
                throw RuntimeError.failed("OVERLAY_IMAGE_DRIVER is '\(driver)': give builtin or fuse2fs")
            }
            readOnlyDriver = driverChoice
            if driverChoice == .builtin { driverExecutable = try ownExecutable() }
            if let writable = job.stack.writable != nil ? images.first : nil {
                writableDriver = driverChoice == .builtin && job.snapshots == nil && ImageDriver.canWrite(image: writable.path) ? .builtin : .fuse2fs
            }
        }

        // The binds Singularity makes, then the current directory, then -B, in mount order.
        var binds: [BindMount] = []
        func add(_ source: String, _ destination: String, readOnly: Bool, required: Bool) throws {
            var info = stat()
            guard stat(source, &info) == 0 else {
                if required { throw RuntimeError.failed("bind source '\(source)' not found: give an existing path with -B") }
                return
            }
            guard destination != "/" else { return }
            binds.removeAll { $0.destination == destination }
            binds.append(BindMount(source: source, destination: destination, readOnly: readOnly,
                                   isDirectory: (info.st_mode & S_IFMT) == S_IFDIR))
        }
        // /proc is the job's own (it has a PID namespace): mounted by its first process.
        for system in ["/sys", "/dev", "/tmp"] where system != "/tmp" || !job.touchesFrozen(system) {
            try add(system, system, readOnly: false, required: false)
        }
        // Not where a snapshot shows a directory as captured: the job sees the snapshot there.
        if let home = environment["HOME"], home.hasPrefix("/"), !job.touchesFrozen(home) {
            try add(home, home, readOnly: false, required: false)
        }
        if !job.touchesFrozen(job.workingDirectory) {
            try add(job.workingDirectory, job.workingDirectory, readOnly: false, required: false)
        }
        for bind in job.binds {
            try add(try absolute(bind.source, what: "bind source"), bind.destination, readOnly: bind.readOnly, required: true)
        }

        let command: [String]
        var extra: [String: String] = [:]
        switch job.command {
        case let .file(file): command = ["/bin/bash", try absolute(file, what: "command file")]
        case let .argv(argv): command = argv
        case .interactiveShell:
            command = shellCandidates(environment: environment)
            // The prompt names the overlays. bash reads ~/.bashrc, which usually sets PS1: the
            // prompt command puts the mark back in front of whatever it set.
            let label = "[overlay " + job.stack.specs.map { spec in
                (spec.path.split(separator: "/").last.map(String.init) ?? spec.path) + (spec.isWritable ? "" : ":ro")
            }.joined(separator: " ") + "] "
            extra["PS1"] = label + "\\u@\\h:\\w\\$ "
            extra["PROMPT_COMMAND"] = "case \"$PS1\" in \(ShellQuote.quote(label))*) ;; *) PS1=\(ShellQuote.quote(label))\"$PS1\" ;; esac"
            extra["OVERLAY_STACK"] = job.stack.specs.map(\.description).joined(separator: " ")
        }
        return NativePlan(mode: mode, userOverlay: userOverlay, staging: staging, images: images, squashfs: squashfs,
                          readOnlyDriver: readOnlyDriver, writableDriver: writableDriver, driverExecutable: driverExecutable,
                          containerRoot: containerRoot, hostCopy: hostCopy, lowerDirs: lowerDirs,
                          upperDir: writable.map { $0.mountPoint + "/upper" } ?? scratch.map { $0 + "/upper" },
                          workDir: writable.map { $0.mountPoint + "/work" } ?? scratch.map { $0 + "/work" },
                          scratch: scratch, root: root, session: session, binds: binds, command: command,
                          interactive: job.command == .interactiveShell,
                          workingDirectory: job.workingDirectory, identity: identity,
                          environment: extra, lockDescriptors: [], jobSnapshots: job.snapshots)
    }

    /// `$SHELL`, else /bin/bash, else /bin/sh: the setup process runs the first the container
    /// has (``interactive`` marks the command as this list).
    static func shellCandidates(environment: [String: String]) -> [String] {
        var candidates: [String] = []
        if let shell = environment["SHELL"], shell.hasPrefix("/") { candidates.append(shell) }
        for shell in ["/bin/bash", "/bin/sh"] where !candidates.contains(shell) { candidates.append(shell) }
        return candidates
    }

    /// This process's executable, which serves read-only images when started with
    /// ``ImageDriver/argument``.
    static func ownExecutable() throws -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else {
            throw RuntimeError.failed("cannot find this program's executable (/proc/self/exe): \(Errno.last); set OVERLAY_IMAGE_DRIVER=fuse2fs")
        }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func absolute(_ path: String, what: String) throws -> String {
        var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard realpath(path, &resolved) != nil else {
            throw RuntimeError.failed("\(what) '\(path)' not found: \(Errno.last)")
        }
        return String(decoding: resolved.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
