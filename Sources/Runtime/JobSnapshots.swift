import CLinux
import Checkpoint
import Ext3
import LinuxSupport
import Overlay
import Pack
import Snapshot

#if canImport(Glibc)
import Glibc
#endif

/// Stops every process of a job's PID namespace (SIGSTOP, children included) and waits until
/// each is stopped (`T` in /proc/PID/stat); ``thaw()`` continues them. Processes that start
/// while the freeze is going on are caught by scanning again until a scan finds nothing new.
struct JobFreezer {
    let initProcess: Int32
    private(set) var stopped: [Int32] = []

    init(initProcess: Int32) { self.initProcess = initProcess }

    static func namespace(of pid: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: 128)
        let count = readlink("/proc/\(pid)/ns/pid", &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The processes whose PID namespace is `namespace` (as /proc numbers them), but this one:
    /// the process that takes a bounded snapshot in FUSE mode lives in the job's namespace.
    static func members(of namespace: String) -> [Int32] {
        guard let dir = opendir("/proc") else { return [] }
        defer { closedir(dir) }
        let me = procSelf()
        var found: [Int32] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let pid = Int32(name), pid > 0, pid != me, Self.namespace(of: pid) == namespace else { continue }
            found.append(pid)
        }
        return found
    }

    /// This process's number in /proc (getpid() numbers it in its own PID namespace, which
    /// differs for a process forked into the job's).
    static func procSelf() -> Int32 {
        var buffer = [CChar](repeating: 0, count: 32)
        let count = readlink("/proc/self", &buffer, buffer.count - 1)
        guard count > 0 else { return getpid() }
        return Int32(String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)) ?? getpid()
    }

    /// Sends `signal` to the process /proc numbers `pid`, through a descriptor of its /proc
    /// directory (pidfd_send_signal), which means the same process whatever PID namespace the
    /// sender is in; kill(2) only where that call is missing.
    static func send(_ signal: Int32, to pid: Int32) {
        let fd = open("/proc/\(pid)", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        if clinux_pidfd_send_signal(fd, signal) != 0 && errno == ENOSYS { kill(pid, signal) }
    }

    /// The state letter of /proc/PID/stat (nil: gone).
    static func state(of pid: Int32) -> Character? {
        guard let text = NativeRuntime.readSmallFile("/proc/\(pid)/stat"),
              let close = text.lastIndex(of: ")") else { return nil }
        return text[text.index(after: close)...].first { $0 != " " }
    }

    /// Whether `pid` can change nothing until it is continued: stopped, gone or a zombie, or a
    /// parent waiting in vfork (posix_spawn, a shell's vfork) for a child that is stopped. Such
    /// a parent cannot stop (it waits in the kernel, in 'D', until the child execs or exits) and
    /// cannot run either; once the child goes on, the SIGCONT of the thaw finds its SIGSTOP
    /// still pending and drops it. Waiting for it to stop would wait for ever.
    static func isHeld(_ pid: Int32) -> Bool {
        let state = Self.state(of: pid)
        guard let state else { return true }
        if state == "T" || state == "t" || state == "Z" || state == "X" { return true }
        guard state == "D", let wchan = NativeRuntime.readSmallFile("/proc/\(pid)/wchan"),
              wchan == "kernel_clone" || wchan == "wait_for_vfork_done" || wchan == "_do_fork" else { return false }
        let children = NativeRuntime.readSmallFile("/proc/\(pid)/task/\(pid)/children") ?? ""
        return children.split(separator: " ").contains { child in
            guard let child = Int32(child) else { return false }
            let state = Self.state(of: child)
            return state == "T" || state == "t"
        }
    }

    /// Stops them all, or throws (after continuing those it stopped) when one is still running
    /// at `deadline` (monotonic milliseconds).
    mutating func freeze(until deadline: Int) throws {
        guard let namespace = Self.namespace(of: initProcess) else {
            throw RuntimeError.failed("the job has ended")
        }
        // From inside the job's namespace (FUSE mode's bounded snapshot) its first process, the
        // toolkit's init, cannot be stopped: the kernel drops SIGSTOP sent to a namespace's init
        // from within. It only starts the command, reaps and passes signals on; it writes no file.
        let inside = Self.namespace(of: Self.procSelf()) == namespace
        while true {
            let members = Self.members(of: namespace).filter { !inside || $0 != initProcess }
            let new = members.filter { !stopped.contains($0) }
            if new.isEmpty { return }
            for pid in new {
                Self.send(SIGSTOP, to: pid)
                stopped.append(pid)
            }
            while let running = new.first(where: { !Self.isHeld($0) }) {
                if MonotonicClock.milliseconds >= deadline {
                    thaw()
                    throw RuntimeError.failed("process \(running) of the job did not stop within the time allowed")
                }
                usleep(200)
            }
        }
    }

    /// The first process in `namespace` with a signal that ends a job (SIGHUP, SIGINT, SIGQUIT,
    /// SIGTERM) pending, and that signal's number. Under SLURM, a time limit, a preemption or
    /// `scontrol requeue` sends SIGTERM to every process of the job step, not only to
    /// run-overlay: one that comes while the job is stopped or being dumped stays pending, and
    /// CRIU dumps pending signals, so a restored job would get it again at once.
    static func pendingTermination(in namespace: String) -> (pid: Int32, signal: Int32)? {
        for pid in members(of: namespace) {
            guard let status = NativeRuntime.readSmallFile("/proc/\(pid)/status") else { continue }
            var pending: UInt64 = 0
            for line in status.split(separator: "\n") where line.hasPrefix("SigPnd:") || line.hasPrefix("ShdPnd:") {
                pending |= UInt64(line.split(separator: "\t").last ?? "", radix: 16) ?? 0
            }
            for signal in [SIGTERM, SIGINT, SIGHUP, SIGQUIT] where pending & (UInt64(1) << UInt64(signal - 1)) != 0 {
                return (pid, signal)
            }
        }
        return nil
    }

    /// Continues every process it stopped.
    mutating func thaw() {
        for pid in stopped { Self.send(SIGCONT, to: pid) }
        stopped = []
    }
}

/// Something to run while the job is frozen, at the same instant as the file-system cut (a
/// process checkpoint: CRIU dumps the stopped processes here). It gets the job's first
/// process and the snapshot's name; a throw fails the snapshot.
public typealias WhileFrozen = @Sendable (_ jobProcess: Int32, _ snapshotName: String) throws -> Void

/// Takes snapshots of a running job (the native runtime as root: its writable overlay is a
/// loop-mounted ext3 image): freeze the job's processes, sync the filesystem, FIFREEZE it (its
/// journal checkpointed, so the image file on disk is clean), copy the image file (a reflink
/// where the filesystem holding it can, else its allocated blocks), FITHAW, continue the job.
/// The description is written into the copy after the job goes on; the copy is named
/// `DIR/<UTC YYYYmmddTHHMMSSZ>[-n].ext3` only when complete, and `DIR/latest` is switched to it
/// (a symbolic link renamed into place).
public struct JobSnapshotter {
    let settings: JobSnapshotSettings
    /// The writable image and where the setup process mounted it.
    let image: String
    let mountPoint: String
    /// Who gets the snapshot files (the invoking user).
    let owner: Ext3.Owner
    var whileFrozen: WhileFrozen?
    /// The `--writable-dir` directories (absolute), copied while the job is frozen and packed
    /// into the snapshot at their paths (JobSnapshots+WritableDirs.swift).
    var writableDirs: [String] = []
    /// FUSE mode (an ordinary user): the image is fuse2fs's, flushed through this instead of
    /// frozen (JobSnapshots+FUSE.swift).
    var fuse: Fuse2fsFlush? = nil
    /// How long the processes may take to stop before a snapshot is given up.
    static let freezeTimeoutMilliseconds = 10_000

    enum Trigger: String { case interval, demand, interruption }

    struct Taken {
        let path: String
        let pauseMilliseconds: Double
        /// Set when `DIR/latest` was left naming this earlier snapshot, which has its
        /// processes, because this one's could not be dumped at interruption.
        var latestKept: String? = nil
    }

    /// One snapshot of the job whose first process is `job`. When `killAfterCut` says so once
    /// the cut is made, the job is killed (SIGKILL to its first process) while still frozen.
    /// `afterEnd`: the job's processes have all ended (nothing is left to stop or dump; the
    /// filesystem is still synced and frozen for the copy).
    func take(job: Int32, trigger: Trigger, afterEnd: Bool = false, killAfterCut: () -> Bool = { false }) throws -> Taken {
        // FUSE mode: writable dirs and filters are copied and packed by child processes, which
        // can only start in the job's PID namespace (a user namespace cannot go back to its
        // own), gone with the job.
        if afterEnd, fuse != nil, !writableDirs.isEmpty || !settings.include.isEmpty || !settings.exclude.isEmpty {
            throw RuntimeError.failed("the job ended before its last snapshot could pause it, and as an ordinary user a snapshot with --writable-dir, --snapshot-include or --snapshot-exclude is only taken while the job runs (a warning signal ahead, --signal=B:USR1@SECS, takes one then)")
        }
        let stamp = Self.utcStamp()
        // A process checkpoint made while frozen, named once the snapshot file is.
        let pending = Self.pendingCheckpoint(settings.directory, stamp: stamp.name)
        defer { Checkpoint.removeTree(pending) }
        let input = open(image, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw RuntimeError.failed("cannot read \(image): \(Errno.last)") }
        defer { close(input) }
        let mount = open(mountPoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard mount >= 0 else { throw RuntimeError.failed("cannot open the mount of \(image): \(Errno.last)") }
        defer { close(mount) }
        let output = FileCalls.openUnnamed(in: settings.directory, mode: 0o644)
        guard output >= 0 else { throw RuntimeError.failed("cannot make a file in \(settings.directory): \(Errno.last)") }
        defer { close(output) }
        var info = stat()
        fstat(input, &info)

        // What the job wrote so far goes to the image before it is stopped, so that the sync
        // in the pause has only the last moments' writes left (kernel mode; fuse2fs is flushed
        // in the pause by its own steps).
        if fuse == nil { _ = FileCalls.syncFilesystem(mount) }
        // Where the image cannot be cloned (a first block tells), its used blocks are read into
        // memory made ready now, and written to the copy after the pause (StagedCopy).
        let staged = FileCalls.cloneRange(output, from: input, offset: 0, length: 4096) != 0
            ? StagedCopy.prepare(input: input, size: Int64(info.st_size)) : nil

        // The pause: from the first SIGSTOP to the last SIGCONT.
        let start = MonotonicClock.nanoseconds
        var freezer = JobFreezer(initProcess: job)
        if !afterEnd { try freezer.freeze(until: MonotonicClock.milliseconds + Self.freezeTimeoutMilliseconds) }
        var cut: Error?
        do {
            try whileFrozen?(job, stamp.name)
            if let fuse {
                try fuse.cut(from: input, to: output, size: Int64(info.st_size), image: image, staged: staged)
            } else {
                _ = FileCalls.syncFilesystem(mount)
                guard FileCalls.freezeFilesystem(mount) == 0 else {
                    throw RuntimeError.failed("cannot freeze the filesystem of \(image) (FIFREEZE): \(Errno.last)")
                }
                do {
                    try StagedCopy.copy(input, to: output, size: Int64(info.st_size), path: image, staged: staged)
                } catch { cut = error }
                _ = FileCalls.thawFilesystem(mount)
            }
        } catch { cut = error }
        // Each writable dir, copied while the job is still stopped.
        let staging = writableDirs.isEmpty ? nil : Self.stagingDirectory(settings.directory, stamp: stamp.name)
        defer { if let staging { Checkpoint.removeTree(staging) } }
        if cut == nil, let staging {
            do { try stageWritableDirs(into: staging) } catch { cut = error }
        }
        if cut == nil && killAfterCut() { kill(job, SIGKILL) }
        freezer.thaw()
        let pause = Double(MonotonicClock.nanoseconds - start) / 1_000_000
        if let cut { throw cut }
        // Without filters, the description goes into the copy itself: opened as it is written.
        let filter = try SnapshotFilter.of(settings)
        let unfiltered = fuse == nil && staging == nil && filter == nil
        let editor = try staged?.writeOut(to: output, path: image, openingCopy: unfiltered)
        // The memory goes when this returns, after the snapshot is named (unmapping it takes a
        // while: nobody waits for that).
        defer { withExtendedLifetime(staged) {} }
        if fuse != nil {
            try Ext3.settleLiveCopy(image: "/proc/self/fd/\(output)", removingWorkFile: Fuse2fsFlush.fileName)
        }

        // With filters: a new image of the files taken, built from the copy (the job goes on
        // meanwhile); the copy, an unnamed file, goes when closed.
        var snapshot = output
        var entries = 0
        var filteredImage: Int32 = -1
        defer { if filteredImage >= 0 { close(filteredImage) } }
        if let staging {
            (filteredImage, entries) = try Self.withWritableDirs(copy: output, staging: staging, directories: writableDirs,
                                                                 filter: filter, owner: owner,
                                                                 in: settings.directory, inChild: fuse != nil)
            snapshot = filteredImage
        } else if let filter {
            (filteredImage, entries) = try fuse == nil ? Self.filtered(copy: output, by: filter, in: settings.directory)
                : Self.filteredInChild(copy: output, by: filter, in: settings.directory)
            snapshot = filteredImage
        }

        var copied = stat()
        fstat(snapshot, &copied)
        let description = SnapshotDescription(
            name: stamp.name, created: stamp.iso, host: Self.hostName(), user: Self.userName(owner.uid),
            captured: [SnapshotDescription.Captured(path: image, kind: "image")]
                + writableDirs.map { SnapshotDescription.Captured(path: $0, kind: "directory") }, git: nil,
            sizeBytes: UInt64(copied.st_size), entries: UInt64(entries), dataBytes: UInt64(copied.st_blocks) * 512)
        var withJob = description
        withJob.job = .init(id: settings.id, trigger: trigger.rawValue, pauseMilliseconds: pause)
        let file = Ext3.RootFile(name: SnapshotDescription.fileName, contents: Array((withJob.json + "\n").utf8), owner: owner)
        if let editor, snapshot == output {
            try editor.add(file, replacing: true)
        } else {
            try file.add(toImage: "/proc/self/fd/\(snapshot)", replacing: true)
        }
        fchown(snapshot, owner.uid, owner.gid)
        fchmod(snapshot, 0o444)
        let path = try link(snapshot, stamp: stamp.name)
        let dumped = access(pending, F_OK) == 0
        if dumped {
            let named = Self.checkpointDirectory(of: path)
            guard rename(pending, named) == 0 else {
                throw RuntimeError.failed("cannot name the process checkpoint \(named): \(Errno.last)")
            }
            chown(named, owner.uid, owner.gid)
        }
        // At interruption, a snapshot whose processes could not be dumped does not replace
        // one that has them: a resume restores that one's files and processes together.
        var latestKept: String?
        if whileFrozen != nil, !dumped, trigger == .interruption, let previous = Self.latestWithProcesses(in: settings.directory) {
            latestKept = previous
        } else {
            try pointLatest(at: path)
        }
        prune()
        return Taken(path: path, pauseMilliseconds: pause, latestKept: latestKept)
    }

    /// The snapshot `DIR/latest` names, when it has a process checkpoint beside it.
    static func latestWithProcesses(in directory: String) -> String? {
        guard let resolved = realpath(directory + "/latest", nil) else { return nil }
        defer { free(resolved) }
        let snapshot = String(cString: resolved)
        return access(checkpointDirectory(of: snapshot), F_OK) == 0 ? snapshot : nil
    }

    /// A new image (an unnamed file in `directory`) holding what `filter` takes of the image
    /// copy `copy` (its upper/ pruned, its work/ empty), sized to what it holds; and how many
    /// files and directories it holds.
    static func filtered(copy: Int32, by filter: SnapshotFilter, in directory: String) throws -> (fd: Int32, entries: Int) {
        try inOwnPIDNamespace { try build(copy: copy, by: filter, in: directory) }
    }

    /// Runs `body` with this process's children (and threads) in its own PID namespace: after
    /// unshare(CLONE_NEWPID) for the job, a process cannot start threads (clone(2): EINVAL),
    /// and the image writer needs one. The job's namespace is put back for children afterwards.
    static func inOwnPIDNamespace<T>(_ body: () throws -> T) throws -> T {
        let own = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC)
        let children = open("/proc/self/ns/pid_for_children", O_RDONLY | O_CLOEXEC)
        defer {
            if own >= 0 { close(own) }
            if children >= 0 { close(children) }
        }
        guard own >= 0, children >= 0 else { return try body() }
        do { try Mounts.enter(own, .pid) } catch {
            throw RuntimeError.failed("cannot build the filtered snapshot: \(error)")
        }
        defer { try? Mounts.enter(children, .pid) }
        return try body()
    }

    static func build(copy: Int32, by filter: SnapshotFilter, in directory: String) throws -> (fd: Int32, entries: Int) {
        let output = FileCalls.openUnnamed(in: directory, mode: 0o644)
        guard output >= 0 else { throw RuntimeError.failed("cannot make a file in \(directory): \(Errno.last)") }
        do {
            return (output, try write(copy: copy, by: filter, to: output))
        } catch {
            close(output)
            throw error
        }
    }

    /// Writes into `output` (an empty file) the image of what `filter` takes of the image copy
    /// `copy`; returns how many files and directories it holds.
    static func write(copy: Int32, by filter: SnapshotFilter, to output: Int32) throws -> Int {
        let image = try Ext3.Image(path: "/proc/self/fd/\(copy)")
        defer { try? image.close() }
        return try write(try Ext3.ImageContents(image: image).pruned(taking: filter.takes), to: output)
    }

    /// Names the finished copy `<stamp>.ext3`, else `<stamp>-2.ext3`, ... (two in one second).
    func link(_ fd: Int32, stamp: String) throws -> String {
        for n in 1...1000 {
            let name = n == 1 ? "\(stamp).ext3" : "\(stamp)-\(n).ext3"
            let path = settings.directory + "/" + name
            if FileCalls.linkUnnamed(fd, to: path) == 0 { return path }
            guard errno == EEXIST else { throw RuntimeError.failed("cannot name the snapshot \(path): \(Errno.last)") }
        }
        throw RuntimeError.failed("too many snapshots named \(stamp)* in \(settings.directory)")
    }

    /// `DIR/latest` -> the snapshot's file name, switched in one rename.
    func pointLatest(at path: String) throws {
        let name = String(path[path.index(after: path.lastIndex(of: "/")!)...])
        let temporary = settings.directory + "/.latest.\(getpid())"
        unlink(temporary)
        guard symlink(name, temporary) == 0 else {
            throw RuntimeError.failed("cannot link \(settings.directory)/latest: \(Errno.last)")
        }
        lchown(temporary, owner.uid, owner.gid)
        guard rename(temporary, settings.directory + "/latest") == 0 else {
            let error = Errno.last
            unlink(temporary)
            throw RuntimeError.failed("cannot switch \(settings.directory)/latest: \(error)")
        }
    }

    /// With `--snapshot-keep N`: removes the oldest job snapshots (files named as this makes
    /// them) beyond the newest N, never the one `DIR/latest` names; nothing else in the
    /// directory is touched.
    func prune() {
        guard let keep = settings.keep else { return }
        var latest: String?
        if let resolved = realpath(settings.directory + "/latest", nil) {
            latest = String(cString: resolved)
            free(resolved)
        }
        let names = Self.snapshotNames(in: settings.directory)
        for name in names.dropLast(keep) {
            let path = settings.directory + "/" + name
            if let latest, latest.hasSuffix("/" + name) { continue }
            unlink(path)
            Checkpoint.removeTree(Self.checkpointDirectory(of: path))
        }
    }

    /// The job snapshots in `directory`, oldest first.
    public static func snapshotNames(in directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var found: [(stamp: String, n: Int, name: String)] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let key = parse(name) { found.append((key.stamp, key.n, name)) }
        }
        return found.sorted { ($0.stamp, $0.n) < ($1.stamp, $1.n) }.map(\.name)
    }

    /// `20261202T174500Z.ext3` -> (stamp, 1); `20261202T174500Z-3.ext3` -> (stamp, 3).
    static func parse(_ name: String) -> (stamp: String, n: Int)? {
        guard name.hasSuffix(".ext3") else { return nil }
        let base = name.dropLast(5)
        let parts = base.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        let stamp = parts[0]
        let bytes = Array(stamp.utf8)
        guard bytes.count == 16, bytes[8] == UInt8(ascii: "T"), bytes[15] == UInt8(ascii: "Z"),
              bytes[0..<8].allSatisfy({ $0 >= 48 && $0 <= 57 }), bytes[9..<15].allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        if parts.count == 2 {
            guard let n = Int(parts[1]), n >= 2, String(n) == parts[1] else { return nil }
            return (String(stamp), n)
        }
        return (String(stamp), 1)
    }

    /// `DIR/<stamp>.ext3` -> `DIR/<stamp>.criu`: its process checkpoint, when it has one.
    public static func checkpointDirectory(of snapshot: String) -> String {
        (snapshot.hasSuffix(".ext3") ? String(snapshot.dropLast(5)) : snapshot) + ".criu"
    }

    /// Where a checkpoint goes while its snapshot is being made.
    static func pendingCheckpoint(_ directory: String, stamp: String) -> String {
        directory + "/.\(stamp).criu.\(getpid())"
    }

    /// What a snapshot's checkpoint manifest says it belongs to: the run and the snapshot.
    public static func checkpointOwner(run id: String, snapshot name: String) -> String {
        "\(id)/\(name)"
    }

    static func utcStamp() -> (iso: String, name: String) {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let date = ["\(parts.tm_year + 1900)", two(parts.tm_mon + 1), two(parts.tm_mday)]
        let clock = [two(parts.tm_hour), two(parts.tm_min), two(parts.tm_sec)]
        return (date.joined(separator: "-") + "T" + clock.joined(separator: ":") + "Z", date.joined() + "T" + clock.joined() + "Z")
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func userName(_ uid: UInt32) -> String {
        if let entry = getpwuid(uid), let name = entry.pointee.pw_name { return String(cString: name) }
        return "\(uid)"
    }
}

extension Setup {
    /// Waits for the job while taking its snapshots: on the timer, on SIGUSR1, and on SIGTERM
    /// (a final one, then SIGTERM goes on to the job). Returns the job's status, or
    /// ``JobSnapshotter/interruptionFailedStatus`` when the final snapshot failed.
    func waitTakingSnapshots(job: Int32, settings: JobSnapshotSettings) -> Int32 {
        guard let image = plan.images.first(where: { !$0.readOnly }) else {
            return Children.wait(job)?.shellStatus ?? 125
        }
        let checkpoints = settings.checkpoint ? JobCheckpoints(directory: settings.directory, run: settings.id) : nil
        // FUSE mode: fuse2fs is asked to write the image out instead of a freeze.
        let fuse = plan.mode == .fuse
            ? Fuse2fsFlush(mountPoint: image.mountPoint, overlayRoot: plan.root,
                           driver: Fuse2fsFlush.driver(among: daemons.map(\.pid), mountPoint: image.mountPoint))
            : nil
        defer { fuse?.finish() }
        let snapshotter = JobSnapshotter(settings: settings, image: image.path, mountPoint: image.mountPoint,
                                         owner: Ext3.Owner(uid: plan.identity.uid, gid: plan.identity.gid),
                                         whileFrozen: checkpoints?.hook, writableDirs: settings.writableDirs, fuse: fuse)
        Self.removeAbandoned(in: settings.directory)
        let every = settings.everySeconds.map { $0 * 1000 }
        var next = every.map { MonotonicClock.milliseconds + $0 } ?? Int.max
        var interruptionStatus: Int32?
        // Whether the snapshot at interruption was taken (or tried): one per run.
        var interrupted = false
        func snapshot(_ trigger: JobSnapshotter.Trigger, afterEnd: Bool = false) -> Bool {
            do {
                // At interruption a job whose processes were dumped ends there, still frozen.
                let taken = try snapshotter.take(job: job, trigger: trigger, afterEnd: afterEnd,
                                                 killAfterCut: { trigger == .interruption && checkpoints != nil && checkpoints?.failure == nil })
                let tenths = Int((taken.pauseMilliseconds * 10).rounded())
                let processes = checkpoints == nil ? "" : checkpoints?.failure == nil ? ", processes in \(Escaped.terminal(JobSnapshotter.checkpointDirectory(of: taken.path)))" : ""
                let when = afterEnd ? "taken after the job ended" : "job paused \(tenths / 10).\(tenths % 10) ms"
                IO.writeLine("snapshot \(Escaped.terminal(taken.path)) (\(trigger.rawValue), \(when)\(processes))", to: 2)
                if let failure = checkpoints?.failure {
                    let ending = afterEnd ? "the job has ended" : "the job gets SIGTERM"
                    let after = trigger != .interruption ? "the job goes on"
                        : taken.latestKept.map { "\(ending); \(Escaped.terminal(settings.directory))/latest still names \(Escaped.terminal($0)), whose files and processes a resume restores" }
                        ?? "\(ending), a resume starts it afresh on this snapshot"
                    IO.writeLine("warning: the job's processes were not dumped (only the snapshot file is kept, \(after)): \(failure)", to: 2)
                }
                return true
            } catch {
                IO.writeLine("warning: snapshot (\(trigger.rawValue)) failed, nothing kept, \(afterEnd ? "the job has ended" : "the job goes on"): \(error)", to: 2)
                return false
            }
        }
        // The last snapshot, at SIGTERM. `ended`: the job's processes have all ended (a batch
        // system's SIGTERM reaches every process of the job at once, and the job may have
        // ended of it first): then it is taken without a pause, nothing being left to stop
        // (the filesystem still synced and frozen for the copy), and no dump is tried.
        func lastSnapshot(ended: Bool) -> Bool {
            checkpoints?.atInterruption = true
            checkpoints?.jobEnded = ended
            // With --checkpoint the job ends at the cut, so its last snapshot is never cut
            // short. FUSE mode's bounded snapshot runs in the job's PID namespace, which is
            // gone once the job has ended: then it is taken here, unbounded (nothing of the
            // job is left to wait for it).
            if checkpoints != nil || (fuse != nil && ended) { return snapshot(.interruption, afterEnd: ended) }
            // Within --snapshot-timeout (JobSnapshots+Bound.swift).
            return boundedSnapshot(within: settings.timeoutSeconds, job: job, jobEnded: ended, mountPoint: image.mountPoint,
                                   directory: settings.directory, checkpoints: nil, inJobNamespace: fuse != nil) {
                snapshot(.interruption, afterEnd: ended)
            }
        }
        while true {
            var ended: WaitStatus?
            Children.reap([job], until: next, woken: { Forwarding.requests.load(ordering: .acquiring) != 0 }) { _, status in
                ended = status
            }
            if let ended {
                // Reaped: no signal may go to its pid any more (it may be another process's).
                Forwarding.target(0)
                // Its SIGTERM came as the job ended (of the same signal, say) and was not
                // read before: the last snapshot is taken all the same. The job's status stays
                // the run's (175 when that snapshot failed).
                if !interrupted, Forwarding.requests.load(ordering: .acquiring) & Forwarding.terminateRequest != 0 {
                    if !lastSnapshot(ended: true) { return JobSnapshotter.interruptionFailedStatus }
                }
                return interruptionStatus ?? ended.shellStatus
            }
            let requests = Forwarding.requests.exchange(0, ordering: .acquiringAndReleasing)
            if requests & Forwarding.terminateRequest != 0 {
                interrupted = true
                // Later signals, SIGTERM included, go straight to the job.
                Forwarding.intercepting.store(false, ordering: .releasing)
                // The job's first process, not reaped yet, is a zombie once it has ended.
                let jobEnded = JobFreezer.state(of: job) == "Z"
                let taken = lastSnapshot(ended: jobEnded)
                if !taken {
                    interruptionStatus = JobSnapshotter.interruptionFailedStatus
                } else if let checkpoints, !jobEnded {
                    interruptionStatus = checkpoints.failure == nil ? JobSnapshotter.checkpointedStatus : JobSnapshotter.dumpFailedStatus
                }
                kill(job, SIGTERM)
            } else if requests & Forwarding.snapshotRequest != 0 {
                _ = snapshot(.demand)
            } else if let every, MonotonicClock.milliseconds >= next {
                _ = snapshot(.interval)
                next = MonotonicClock.milliseconds + every
            }
        }
    }
}

extension JobSnapshotter {
    /// run-overlay's status when the snapshot at interruption (SIGTERM) failed.
    public static let interruptionFailedStatus: Int32 = 175
    /// With --checkpoint: the job was dumped at interruption (SIGTERM) and ended there, frozen;
    /// `--resume --checkpoint` goes on from it.
    public static let checkpointedStatus: Int32 = 177
    /// With --checkpoint: the snapshot file at interruption was taken but the processes could
    /// not be dumped; the job got SIGTERM.
    public static let dumpFailedStatus: Int32 = 178
}

/// `--checkpoint`: dumps the job's processes with CRIU while the job is frozen for a snapshot
/// (left running: the snapshotter continues them, or kills them at interruption).
final class JobCheckpoints: @unchecked Sendable {
    let directory: String
    let run: String
    /// Why the last dump failed (nil: it worked).
    var failure: String?
    /// Set for the dump at SIGTERM.
    var atInterruption = false
    /// Set when the job's processes ended before they could be dumped (of a SIGTERM that
    /// reached them at once).
    var jobEnded = false

    init(directory: String, run: String) {
        self.directory = directory
        self.run = run
    }

    var hook: WhileFrozen { { [self] pid, name in dump(job: pid, snapshot: name) } }

    func dump(job: Int32, snapshot name: String) {
        failure = nil
        // Under SLURM that SIGTERM reached every process of the job at once, not only
        // run-overlay: a dump now may hold it in a way not seen from outside (a process caught
        // inside its own handler), and the restored job would end at once. A checkpoint taken
        // before (the warning signal's, a periodic one) is the sure one: a resume restores it.
        if atInterruption, environmentValue("SLURM_JOB_ID") != nil, let earlier = JobSnapshotter.latestWithProcesses(in: directory) {
            failure = "under SLURM this SIGTERM reached every process of the job at once, so a dump now could hold it; the checkpoint taken before, \(Escaped.terminal(earlier)), is kept for the resume"
            return
        }
        if jobEnded {
            failure = "the job's processes ended of that SIGTERM before they could be dumped (a batch system sends it to every process of the job at once)"
            return
        }
        // This process made the job's PID namespace its children's (unshare): CRIU must start
        // outside it, in this process's own, and the job's is put back after.
        let own = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC)
        let children = open("/proc/self/ns/pid_for_children", O_RDONLY | O_CLOEXEC)
        defer {
            if children >= 0 { try? Mounts.enter(children, .pid) }
            close(own)
            close(children)
        }
        do {
            try Mounts.enter(own, .pid)
        } catch {
            failure = "cannot leave the job's PID namespace to run criu: \(error)"
            return
        }
        let pending = JobSnapshotter.pendingCheckpoint(directory, stamp: name)
        let namespace = JobFreezer.namespace(of: job)
        // Those alive now (a child that has exited but is not yet reaped is a zombie already).
        let members = (namespace.map(JobFreezer.members(of:)) ?? []).filter { pid in
            let state = JobFreezer.state(of: pid)
            return state != nil && state != "Z" && state != "X"
        }
        do {
            try Checkpoint.dump(root: job, to: pending, leaveRunning: true,
                                belongsTo: JobSnapshotter.checkpointOwner(run: run, snapshot: name), sharesJobMounts: true)
        } catch {
            failure = error.description
            return
        }
        // A dump holding a pending SIGTERM (from outside: SLURM signals every process of the
        // job) would end as soon as it is restored: it is not kept. Such a signal shows as
        // pending while the process stays stopped, or ends the process once CRIU lets go of
        // it (the frozen job's processes do not end otherwise).
        let why: String
        if let namespace, let signalled = JobFreezer.pendingTermination(in: namespace) {
            why = "process \(signalled.pid) of the job already had \(signalled.signal == SIGTERM ? "SIGTERM" : "signal \(signalled.signal)") pending"
        } else if let gone = members.first(where: { pid in
            let state = JobFreezer.state(of: pid)
            return state != "T" && state != "t"
        }) {
            why = "process \(gone) of the job ended (or left its stop) while it was frozen and dumped"
        } else {
            return
        }
        Checkpoint.removeTree(pending)
        failure = "\(why) (a signal sent to the job's processes from outside, as SLURM sends SIGTERM to every process of a job), so its dump would end as soon as it was restored; dumps taken before that (SIGUSR1, --signal=B:USR1@SECS) are kept"
    }
}

/// `--resume`: puts the writable overlay back to the latest job snapshot before the job starts.
public enum JobResume {
    /// run-overlay's status when the writable overlay could not be restored.
    public static let failedStatus: Int32 = 176

    /// With `--checkpoint`: the process checkpoint beside the snapshot `DIR/latest` names
    /// (`<snapshot>.criu`), when there is one; it must have been dumped at that snapshot's cut
    /// (its manifest's belongsTo names the snapshot's run and name), else this throws.
    public static func processCheckpoint(from settings: JobSnapshotSettings) throws -> String? {
        guard let resolved = realpath(settings.directory + "/latest", nil) else { return nil }
        let snapshot = String(cString: resolved)
        free(resolved)
        let directory = JobSnapshotter.checkpointDirectory(of: snapshot)
        guard access(directory, F_OK) == 0 else { return nil }
        let description: SnapshotDescription
        do { description = try SnapshotStore.describe(snapshot) } catch {
            throw RuntimeError.failed("\(Escaped.terminal(snapshot)) cannot be read as a job snapshot (\(error))")
        }
        let manifest: CheckpointManifest
        do { manifest = try Checkpoint.manifest(in: directory) } catch {
            throw RuntimeError.failed("\(error): remove \(Escaped.terminal(directory)) to resume from the snapshot file alone")
        }
        guard let job = description.job,
              manifest.belongsTo == JobSnapshotter.checkpointOwner(run: job.id, snapshot: description.name) else {
            throw RuntimeError.failed("the process checkpoint \(Escaped.terminal(directory)) was not dumped with the snapshot \(Escaped.terminal(snapshot)) (it belongs to '\(Escaped.terminal(manifest.belongsTo))'): remove it to resume from the snapshot file alone")
        }
        return directory
    }

    /// When `DIR/latest` names a snapshot of `image`, replaces `image` with it (under a write
    /// lock, through a copy renamed over the image, so a failure leaves the image as it was)
    /// and returns what was done; nil when there is no snapshot yet (a fresh start).
    public static func restore(image: String, from settings: JobSnapshotSettings) throws -> String? {
        let latest = settings.directory + "/latest"
        var info = stat()
        guard lstat(latest, &info) == 0 else { return nil }
        guard let resolved = realpath(latest, nil) else {
            throw RuntimeError.failed("\(latest) names no snapshot (\(Errno.last)): remove it to start fresh, or point it at a snapshot")
        }
        let snapshot = String(cString: resolved)
        free(resolved)
        guard let real = realpath(image, nil) else { throw RuntimeError.failed("overlay '\(image)' not found: \(Errno.last)") }
        let target = String(cString: real)
        free(real)
        let description: SnapshotDescription
        do { description = try SnapshotStore.describe(snapshot) } catch {
            throw RuntimeError.failed("\(snapshot) cannot be read as a job snapshot (\(error))")
        }
        guard description.job != nil, description.captured.first?.path == target else {
            throw RuntimeError.failed("\(snapshot) is not a snapshot of \(target) (it captured \(description.captured.map(\.path).joined(separator: ", "))): use another --snapshot-to directory for this overlay")
        }
        let lock = try ImageLock.acquire(target, .write)
        defer { lock.release() }
        var old = stat()
        stat(target, &old)
        let directory = String(target[..<target.lastIndex(of: "/")!])
        let input = open(snapshot, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw RuntimeError.failed("cannot read \(snapshot): \(Errno.last)") }
        defer { close(input) }
        var size = stat()
        fstat(input, &size)
        let output = FileCalls.openUnnamed(in: directory.isEmpty ? "/" : directory, mode: 0o600)
        guard output >= 0 else { throw RuntimeError.failed("cannot make a file beside \(target): \(Errno.last)") }
        defer { close(output) }
        if FileCalls.cloneFile(output, from: input) != 0 {
            try SnapshotCapture.copyAllocated(from: input, to: output, size: Int64(size.st_size), path: snapshot)
        }
        var path = "/proc/\(getpid())/fd/\(output)"
        try Ext3.RootFile.remove(named: SnapshotDescription.fileName, fromImage: path)
        // Writable dirs it holds stay out of the overlay (JobSnapshots+WritableDirs.swift).
        var rebuilt: Int32 = -1
        defer { if rebuilt >= 0 { close(rebuilt) } }
        let held = writableDirs(of: description)
        if !held.isEmpty {
            let current = try Ext3.Image(path: target)
            let inodes = current.inodeCount
            try? current.close()
            rebuilt = try withoutWritableDirs(copy: output, paths: held, size: Int64(old.st_size), inodes: inodes,
                                              in: directory.isEmpty ? "/" : directory)
            path = "/proc/\(getpid())/fd/\(rebuilt)"
            size.st_size = old.st_size
        }
        let restored = rebuilt >= 0 ? rebuilt : output
        let check = try Program.run(["e2fsck", "-fn", path])
        guard check.status == 0 else {
            throw RuntimeError.failed("the overlay restored from \(snapshot) fails e2fsck -fn: \(target) is unchanged")
        }
        // A filtered snapshot is sized to what it kept: the overlay gets its old size back.
        var grown = ""
        if size.st_size < old.st_size {
            guard ftruncate(restored, old.st_size) == 0 else {
                throw RuntimeError.failed("cannot grow the overlay restored from \(snapshot) to its old size: \(Errno.last); \(target) is unchanged")
            }
            let resize = try Program.run(["resize2fs", "-f", path])
            guard resize.status == 0 else {
                throw RuntimeError.failed("cannot grow the overlay restored from \(snapshot) to its old size (resize2fs failed): \(target) is unchanged")
            }
            grown = " (grown back to its old size)"
        }
        fchown(restored, old.st_uid, old.st_gid)
        fchmod(restored, old.st_mode & 0o7777)
        let temporary = directory + "/." + String(target[target.index(after: target.lastIndex(of: "/")!)...]) + ".resume-\(getpid())"
        unlink(temporary)
        guard FileCalls.linkUnnamed(restored, to: temporary) == 0 else {
            throw RuntimeError.failed("cannot name the restored overlay \(temporary): \(Errno.last)")
        }
        guard rename(temporary, target) == 0 else {
            let error = Errno.last
            unlink(temporary)
            throw RuntimeError.failed("cannot put the restored overlay in place of \(target): \(error)")
        }
        return "resumed: \(Escaped.terminal(target)) restored to the snapshot \(Escaped.terminal(snapshot)) taken \(Escaped.terminal(description.created))\(grown); what the job wrote after it is rolled back"
    }
}
