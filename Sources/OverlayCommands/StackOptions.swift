import Checkpoint
import LinuxSupport
import ArgumentParser
import Overlay
import Runtime
import Snapshot

#if canImport(Glibc)
import Glibc
#endif

/// Options shared by run-overlay and mount-overlay.
public struct StackOptions: ParsableArguments {
    public init() {}

    @Option(name: .shortAndLong, parsing: .singleValue,
            help: ArgumentHelp("Overlay image; the first is writable unless it ends in :ro, the rest are read-only. Repeat to stack.",
                               valueName: "image[:ro]"),
            completion: .overlayImage,
            transform: { try OverlayArgument(parsing: $0) })
    public var overlay: [OverlayArgument] = []

    @Option(name: .shortAndLong,
            help: ArgumentHelp("Container: a SIF file, a squashfs image, a sandbox directory, /, or for Singularity a URI such as docker://ubuntu (default: $OVERLAY_CONTAINER, else container in the config file, else / for the native runtime; Singularity needs one; see overlay config).",
                               valueName: "container"),
            completion: .container)
    public var container: String?

    @Option(name: [.customShort("B"), .customLong("bind")], parsing: .singleValue,
            help: ArgumentHelp("Bind a host path into the container. Repeatable.", valueName: "src[:dst[:ro]]"),
            completion: .file(),
            transform: { try Bind(parsing: $0) })
    public var bind: [Bind] = []

    @Option(help: ArgumentHelp("Runtime: auto (Apptainer/Singularity when on PATH, else native), native, singularity, apptainer (default: $OVERLAY_RUNTIME, else runtime in the config file, else auto).",
                               valueName: "runtime"),
            completion: .list(RuntimeKind.allCases.map(\.rawValue)),
            transform: { text in
                guard let kind = RuntimeKind(rawValue: text) else {
                    throw UsageError("unknown runtime '\(text)': use auto, native, singularity or apptainer")
                }
                return kind
            })
    public var runtime: RuntimeKind?

    @Option(name: .customLong("runtime-option"), parsing: .unconditionalSingleValue,
            help: ArgumentHelp("Pass an option to Singularity/Apptainer as is, e.g. --runtime-option=--nv. Repeatable. The native runtime refuses them, saying what to do instead.",
                               valueName: "option"))
    public var runtimeOptions: [String] = []

    @Option(name: .customLong("snapshot"), parsing: .singleValue,
            help: ArgumentHelp("Show the job this snapshot (a name in the store, or its file) as it was captured; its changes go to the writable -o, else to a scratch layer thrown away at the end. Repeatable.",
                               valueName: "name"))
    public var snapshots: [String] = []

    @Option(name: .customLong("writable-dir"), parsing: .singleValue,
            help: ArgumentHelp("Bind this live host directory read-write (changes persist), also inside a snapshot. Without --snapshot, the working directory (a git repository's top level) is snapshotted for this job. With --snapshot-to, each job snapshot holds it at its path, copied while the job is paused; --resume never rolls it back. Repeatable.",
                               valueName: "dir"))
    public var writableDirs: [String] = []

    @Option(name: .customLong("snapshot-to"),
            help: ArgumentHelp("Take snapshots of the running job (its writable overlay and each --writable-dir, at one instant: the job is paused for the cut) into this existing directory, as DIR/<UTC time>.ext3, with DIR/latest naming the newest; SIGUSR1 takes one, SIGTERM takes a last one before the job gets it. Native runtime (as root, or as an ordinary user through fuse2fs).",
                               valueName: "dir"))
    public var snapshotTo: String?

    @Option(name: .customLong("snapshot-every"),
            help: ArgumentHelp("With --snapshot-to: also take one every SECONDS (a whole number above 0).", valueName: "seconds"))
    public var snapshotEvery: Int?

    @Option(name: .customLong("snapshot-timeout"),
            help: ArgumentHelp("With --snapshot-to: the most the last snapshot at SIGTERM may take (default 20, decimals allowed); when it runs out the snapshot is dropped whole, the job gets SIGTERM and the status is 175. Keep it below SLURM's KillWait (time limit) or GraceTime (preemption). Not with --checkpoint.",
                               valueName: "seconds"))
    public var snapshotTimeout: Double?

    @Option(name: .customLong("snapshot-keep"),
            help: ArgumentHelp("With --snapshot-to: keep only the newest N job snapshots in the directory (default: all), and always the one DIR/latest names; nothing else there is ever removed.",
                               valueName: "n"))
    public var snapshotKeep: Int?

    @Option(name: .customLong("snapshot-include"),
            help: ArgumentHelp("With --snapshot-to: take only the files whose path matches this regex as a whole (anchored at both ends), the path being relative to the writable overlay's top (for a --writable-dir's files, to that directory), '/' between names, no leading '/' (e.g. 'results/log\\..*'). Repeatable: a file is taken when it matches any include (all files when none is given) and no --snapshot-exclude; directories are kept only when they lead to a taken file; whiteouts count as files. Filtered snapshots are built from the frozen copy after the job goes on.",
                               valueName: "regex"))
    public var snapshotInclude: [String] = []

    @Option(name: .customLong("snapshot-exclude"),
            help: ArgumentHelp("With --snapshot-to: leave out the files whose path matches this regex as a whole (same paths as --snapshot-include). Repeatable.",
                               valueName: "regex"))
    public var snapshotExclude: [String] = []

    @Flag(help: "With --snapshot-to: when DIR/latest exists, put the writable overlay back to that snapshot before the job starts (what was written after it is rolled back); else start fresh. Implied when SLURM_RESTART_COUNT is above 0. --writable-dir directories are never rolled back.")
    public var resume = false

    @Flag(help: "With --snapshot-to: each job snapshot also dumps the job's processes with CRIU (DIR/<time>.criu beside DIR/<time>.ext3); at SIGTERM the job is dumped and ends (status 177; 178: the dump failed or could hold a SIGTERM sent to the job from outside, as SLURM does, and under SLURM whenever a checkpoint exists already: the snapshot file alone was kept, and DIR/latest stays on an earlier snapshot with processes if there is one). With --resume, the processes of the latest snapshot are restored in place of the command (status 179: they could not be restored; the overlay keeps the snapshot's files). Native runtime, as root only.")
    public var checkpoint = false

    @Flag(help: "Print the plan (mounts and command) and do nothing.")
    public var dryRun = false

    // Apptainer's own options, as its users type them: passed to Apptainer/Singularity; the
    // native runtime refuses each in one line saying what to do instead.
    @Flag(help: "NVIDIA GPUs, as Apptainer's --nv (Apptainer/Singularity only).")
    public var nv = false

    @Flag(help: "AMD GPUs, as Apptainer's --rocm (Apptainer/Singularity only).")
    public var rocm = false

    @Flag(help: "A clean environment, as Apptainer's --cleanenv (Apptainer/Singularity only).")
    public var cleanenv = false

    @Option(help: ArgumentHelp("Start in this directory inside the container, as Apptainer's --pwd (Apptainer/Singularity only).",
                               valueName: "dir"),
            completion: .directory)
    public var pwd: String?

    @Flag(name: .customLong("writable-tmpfs"),
          help: "A writable layer in memory, as Apptainer's --writable-tmpfs (Apptainer/Singularity only).")
    public var writableTmpfs = false

    /// Those options as Apptainer takes them.
    var apptainerOptions: [String] {
        var options: [String] = []
        if nv { options.append("--nv") }
        if rocm { options.append("--rocm") }
        if cleanenv { options.append("--cleanenv") }
        if let pwd { options += ["--pwd", pwd] }
        if writableTmpfs { options.append("--writable-tmpfs") }
        return options
    }

    @Argument(help: ArgumentHelp("Not taken: the container goes with -c (apptainer exec takes it here; refused with that hint).",
                                 valueName: "container", visibility: .hidden),
              completion: .container)
    public var positionalContainer: String?

    public func validate() throws {
        if let word = positionalContainer {
            let tool = CommandLine.arguments.first.map { String($0.split(separator: "/").last ?? "") } ?? ""
            throw UsageError(Self.positionalAdvice(word, shell: tool == "mount-overlay"))
        }
        if let snapshotEvery, snapshotEvery <= 0 {
            throw UsageError("--snapshot-every \(snapshotEvery): give a number of seconds above 0")
        }
        if let snapshotTimeout, !(snapshotTimeout > 0 && snapshotTimeout <= 86_400) {
            throw UsageError("--snapshot-timeout \(snapshotTimeout): give a number of seconds above 0 (at most 86400)")
        }
        if snapshotTo == nil && snapshotTimeout != nil {
            throw UsageError("--snapshot-timeout bounds the last job snapshot at SIGTERM: give --snapshot-to DIR too")
        }
        if checkpoint && snapshotTimeout != nil {
            throw UsageError("--snapshot-timeout does not go with --checkpoint: the job ends at the dump, so its last snapshot is never cut short")
        }
        if let snapshotKeep, snapshotKeep <= 0 {
            throw UsageError("--snapshot-keep \(snapshotKeep): give how many to keep, 1 or more")
        }
        if snapshotTo == nil && resume {
            throw UsageError("--resume restores from the job's snapshots: give --snapshot-to DIR too")
        }
        if snapshotTo == nil && checkpoint {
            throw UsageError("--checkpoint dumps the job's processes with each job snapshot: give --snapshot-to DIR too")
        }
        if snapshotTo == nil && (snapshotEvery != nil || snapshotKeep != nil) {
            throw UsageError("--snapshot-every and --snapshot-keep go with --snapshot-to DIR")
        }
        if snapshotTo != nil, let problem = StagedCopy.settingProblem() {
            throw UsageError(problem)
        }
        if snapshotTo == nil && (!snapshotInclude.isEmpty || !snapshotExclude.isEmpty) {
            throw UsageError("--snapshot-include and --snapshot-exclude filter job snapshots: give --snapshot-to DIR too")
        }
        do {
            _ = try SnapshotFilter(include: snapshotInclude, exclude: snapshotExclude)
        } catch let error as RuntimeError {
            throw UsageError(error.description)
        }
        if !overlay.isEmpty || (snapshots.isEmpty && writableDirs.isEmpty) {
            _ = try OverlayStack(parsed: overlay)
        }
    }

    /// For a word before `--` that is not an option: a container (`image.sif`, as apptainer
    /// exec takes it) goes with -c; anything else is a command, which goes after --.
    static func positionalAdvice(_ word: String, shell: Bool = false) -> String {
        var info = stat()
        let lower = word.lowercased()
        let container = isURI(word) || lower.hasSuffix(".sif") || lower.hasSuffix(".sqsh") || lower.hasSuffix(".squashfs")
            || lower.hasSuffix(".img") || (stat(word, &info) == 0 && (info.st_mode & S_IFMT) != S_IFREG || word.contains("/") && access(word, F_OK) == 0)
        if container {
            if shell { return "'\(word)': give the container with -c: mount-overlay -o IMAGE -c \(word)" }
            return "'\(word)': give the container with -c (-c \(word)), and a command after --, e.g. run-overlay -o IMAGE:ro -c \(word) -- COMMAND"
        }
        if shell {
            return "'\(word)': mount-overlay takes no command (it opens a shell); to run one, use run-overlay -o IMAGE -- \(word) ..."
        }
        return "'\(word)': put the command after -- (run-overlay -o IMAGE -- \(word) ...), or give a command file with -f"
    }

    /// The effective settings: the flags, else the environment, else the configuration files
    /// (see ``Configuration``).
    public func configuration(environment: [String: String] = currentEnvironment()) throws -> Configuration {
        var flags: [Configuration.Key: String] = [:]
        if let container { flags[.container] = container }
        if let runtime { flags[.runtime] = runtime.rawValue }
        return try Configuration.load(environment: environment, flags: flags)
    }

    /// The runtime kind: `--runtime`, else `$OVERLAY_RUNTIME`, else the config files, else auto.
    public func runtimeKind(environment: [String: String] = currentEnvironment()) throws -> RuntimeKind {
        try Self.runtimeKind(from: configuration(environment: environment))
    }

    static func runtimeKind(from configuration: Configuration) throws -> RuntimeKind {
        let setting = configuration.runtime
        let text = setting.value ?? Configuration.defaultRuntime
        guard let kind = RuntimeKind(rawValue: text) else {
            throw OverlayError.message("unknown runtime '\(text)' (from \(setting.source)): use auto, native, singularity or apptainer")
        }
        return kind
    }

    /// Builds the validated job for `command`; `extraSnapshots` are snapshot files stacked
    /// after the `--snapshot` ones (the job's own, for --writable-dir alone).
    public func job(command: JobCommand, environment: [String: String] = currentEnvironment(),
                    extraSnapshots: [String] = []) throws -> Job {
        var specs = overlay.isEmpty ? [] : try OverlayStack(parsed: overlay).specs
        var frozen: [String] = []
        var files: [String] = []
        if !snapshots.isEmpty {
            let store = try SnapshotStore.locate(environment: environment)
            files = try snapshots.map { try store.resolve($0) }
        }
        for file in files + extraSnapshots {
            let description = try SnapshotStore.describe(file)
            frozen += description.captured.filter { $0.kind != "image" }.map(\.path)
            specs.append(OverlaySpec(path: file, mode: .readOnly))
        }
        let stack = try OverlayStack(specs: specs)
        try stack.checkDistinctImages()
        var binds = bind
        for directory in writableDirs {
            binds.append(Bind(source: try Self.writableDirectory(directory), destination: try Self.writableDirectory(directory)))
        }
        let configuration = try configuration(environment: environment)
        let kind = try Self.runtimeKind(from: configuration)
        let reference = try Self.container(configuration.container,
                                           forSingularity: RuntimeSelection.choosesSingularity(kind))
        var job = Job(stack: stack, container: reference, binds: binds, command: command,
                      workingDirectory: currentDirectory(), runtimeOptions: apptainerOptions + runtimeOptions)
        job.frozenPaths = frozen
        job.scratch = !(files + extraSnapshots).isEmpty && stack.writable == nil
        if let snapshotTo {
            guard stack.writable != nil else {
                throw CommandFailure("--snapshot-to \(snapshotTo): a job snapshot captures the writable overlay: give a writable first -o IMAGE")
            }
            job.snapshots = JobSnapshotSettings(directory: try Self.snapshotDirectory(snapshotTo), everySeconds: snapshotEvery,
                                                keep: snapshotKeep, id: String(getpid()),
                                                include: snapshotInclude, exclude: snapshotExclude)
            job.snapshots?.checkpoint = checkpoint
            job.snapshots?.writableDirs = try writableDirs.map { try Self.writableDirectory($0) }
            if let snapshotTimeout { job.snapshots?.timeoutSeconds = snapshotTimeout }
        }
        return job
    }

    /// A `--writable-dir` as an absolute, resolved path (a relative one from the working
    /// directory); it must be an existing directory.
    static func writableDirectory(_ path: String) throws -> String {
        var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        var info = stat()
        guard realpath(path, &resolved) != nil, stat(resolved, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw CommandFailure("--writable-dir \(path): no such directory: make it first (mkdir -p \(path))")
        }
        return String(decoding: resolved.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `--snapshot-to DIR` as an absolute, resolved path: an existing directory this user may
    /// write into.
    static func snapshotDirectory(_ path: String) throws -> String {
        var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        var info = stat()
        guard realpath(path, &resolved) != nil, stat(resolved, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw CommandFailure("--snapshot-to \(path): no such directory: make it first (mkdir -p \(path))")
        }
        let absolute = String(decoding: resolved.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let identity = NativeRuntime.invokingIdentity()
        let writable = identity.change
            ? (info.st_uid == identity.uid ? info.st_mode & 0o200 != 0 : (info.st_gid == identity.gid ? info.st_mode & 0o020 != 0 : info.st_mode & 0o002 != 0))
            : access(absolute, W_OK) == 0
        guard writable else {
            throw CommandFailure("--snapshot-to \(path): you cannot write into this directory: choose one of yours")
        }
        return absolute
    }

    /// For --writable-dir without --snapshot: the working directory (a git repository's top
    /// level) captured into a snapshot of this job's own, in `<store>/.jobs/`; removed by
    /// the caller when the job ends (and on SIGINT, SIGTERM or SIGHUP).
    func jobSnapshot(environment: [String: String]) throws -> (path: String, slot: Int?) {
        let store = try SnapshotStore.locate(environment: environment)
        let jobs = SnapshotStore(directory: store.directory + "/.jobs", setting: store.setting)
        let directory = GitSnapshot.topLevel(of: currentDirectory()) ?? currentDirectory()
        let owner = CreateOverlay.owner(fakeroot: false, environment: environment)
        let now = SnapshotCreate.utcNow()
        let capture = try SnapshotCapture(store: jobs, name: "job-\(now.stamp)-\(getpid())", owner: owner.layout, imageOwner: owner.image)
        let slot = TemporaryFiles.register(capture.target)
        do {
            _ = try capture.capture(directories: [directory], created: now.iso, host: SnapshotCreate.hostName(),
                                    user: SnapshotCreate.userName(owner.layout.uid, environment: environment))
        } catch {
            TemporaryFiles.unregister(slot)
            throw error
        }
        return (capture.target, slot)
    }

    /// The message when Singularity is chosen and nothing names a container.
    public static let singularityNeedsContainer =
        "Singularity needs a container image: give -c IMAGE or set container in ~/.config/overlay/config"

    /// The container a job runs in, from the effective `container` setting.
    ///
    /// The native runtime defaults to the host (`/`) and mounts only what it recognises. For
    /// Singularity the value is passed on as given: it must name an image (there is no default),
    /// may be a URI it pulls itself (`docker://`, `library://`, `oras://`, ...; it turns those
    /// into a SIF in its cache, hence `.sif`), and a local file we do not recognise (an ext3
    /// image, for one) is left for it to judge.
    static func container(_ setting: Configuration.Setting, forSingularity: Bool) throws -> ContainerReference {
        guard let value = setting.value else {
            if forSingularity { throw OverlayError.message(singularityNeedsContainer) }
            return .host
        }
        let origin = setting.source == .flag("-c") ? "" : " (from \(setting.source))"
        if isURI(value) {
            guard forSingularity else {
                throw OverlayError.message("container '\(value)'\(origin) is a URI only Singularity/Apptainer can pull: use --runtime apptainer, or give a local SIF file, squashfs image or directory")
            }
            return .sif(value)
        }
        do {
            return try ContainerReference.detect(value)
        } catch OverlayError.unknownContainer(_) where forSingularity {
            return .sif(value)
        } catch let error as OverlayError {
            throw OverlayError.message(error.description + origin)
        }
    }

    /// Why the native runtime does not take `--runtime-option=OPTION`, and what to do instead:
    /// the options are Singularity/Apptainer's, and ignoring one silently would run the job
    /// without what it asked for.
    static func nativeRefusal(_ option: String, asFlag: Bool = false) -> String {
        let name = option.split(separator: "=", maxSplits: 1).first.map(String.init) ?? option
        let advice: String
        switch name {
        case "--nv", "--rocm":
            advice = "it does not set up GPUs; run with --runtime apptainer where Apptainer is installed"
        case "--fakeroot", "-f":
            advice = "it runs the job as you (as root, run-overlay as root); for a root-owned overlay use create-overlay --fakeroot with Apptainer"
        case "--writable-tmpfs":
            advice = "give a writable overlay as the first -o instead: it keeps what the job writes"
        case "--pwd":
            advice = "the job starts in the directory you run it from (bound in): cd there first, or use --runtime apptainer"
        case "--contain", "-c", "--containall", "-C", "--cleanenv", "-e":
            advice = "it always binds /sys, /dev, /tmp, $HOME and the working directory and keeps your environment; use --runtime apptainer for \(name)"
        default:
            advice = "it takes no Singularity/Apptainer options; use --runtime apptainer or singularity, or leave the option out"
        }
        return "\(asFlag ? name : "--runtime-option=" + option) is not supported by the native runtime: \(advice)"
    }

    /// `scheme://...`, as Singularity writes image sources.
    static func isURI(_ text: String) -> Bool {
        guard let colon = text.firstIndex(of: ":"), text[colon...].hasPrefix("://") else { return false }
        let scheme = text[..<colon]
        guard let first = scheme.first, first.isASCII, first.isLetter else { return false }
        return scheme.allSatisfy { (c: Character) -> Bool in
            c.isASCII && (c.isLetter || c.isNumber || c == "+" || c == "-" || c == ".")
        }
    }

    /// Runs (or, with --dry-run, prints) the job; exits with the job's status.
    func execute(_ command: JobCommand) throws {
        // The runtime first: a missing Apptainer is named before anything it would need.
        let runtime = try RuntimeSelection.make(try runtimeKind())
        if runtime is NativeRuntime {
            if let option = apptainerOptions.first { throw CommandFailure(Self.nativeRefusal(option, asFlag: true)) }
            if let option = runtimeOptions.first { throw CommandFailure(Self.nativeRefusal(option)) }
        }
        if snapshotTo != nil {
            guard runtime is NativeRuntime else {
                throw CommandFailure("--snapshot-to needs the native runtime (\(runtime.name) replaces this process): give --runtime native")
            }
            // An ordinary user's job snapshots are cut through fuse2fs (FUSE mode); their
            // processes cannot be dumped.
            guard geteuid() == 0 || !checkpoint else {
                throw CommandFailure("--checkpoint needs root (CRIU cannot dump or restore a job run in a user namespace through FUSE drivers): leave --checkpoint out to keep job snapshots of the files, or run as root")
            }
        }
        var own: (path: String, slot: Int?)?
        if snapshots.isEmpty && !writableDirs.isEmpty {
            guard runtime is NativeRuntime else {
                throw CommandFailure("--writable-dir without --snapshot needs the native runtime (\(runtime.name) replaces this process, which could not remove the job's snapshot): make one with overlay snapshot create NAME and give --snapshot NAME")
            }
            for directory in writableDirs { _ = try Self.writableDirectory(directory) }
            own = try jobSnapshot(environment: currentEnvironment())
        }
        defer {
            if let own {
                unlink(own.path)
                TemporaryFiles.unregister(own.slot)
            }
        }
        let job = try job(command: command, extraSnapshots: own.map { [$0.path] } ?? [])
        if dryRun {
            for line in try runtime.plan(for: job) { print(line) }
            return
        }
        if checkpoint, let problem = Checkpoint.missing() {
            throw CommandFailure("--checkpoint: process checkpoints are not available: \(problem)")
        }
        let restarted = (currentEnvironment()["SLURM_RESTART_COUNT"].flatMap { Int($0) } ?? 0) > 0
        var restoring: String?
        if let settings = job.snapshots, let writable = job.stack.writable, resume || restarted {
            do {
                if checkpoint { restoring = try JobResume.processCheckpoint(from: settings) }
                if let done = try JobResume.restore(image: writable.path, from: settings) {
                    IO.writeLine(done)
                } else {
                    IO.writeLine("no snapshot in \(Escaped.terminal(settings.directory)) yet: starting fresh")
                }
                if let restoring {
                    IO.writeLine("resuming the job's processes from \(Escaped.terminal(restoring)) in place of the command")
                } else if checkpoint && access(settings.directory + "/latest", F_OK) == 0 {
                    IO.writeLine("no process checkpoint beside the latest snapshot: the command starts afresh")
                }
                if let note = JobResume.writableDirsNote(settings.writableDirs, settings: settings) {
                    IO.writeLine(note)
                }
            } catch {
                IO.writeLine("error: cannot resume: \(error)")
                throw ExitCode(JobResume.failedStatus)
            }
        }
        var registered: (path: String, slot: Int?)?
        if let settings = job.snapshots {
            let entry = JobEntry(id: settings.id, pid: getpid(), host: JobSnapshotsHost.name(),
                                 images: job.stack.specs.map { (try? NativePlanPaths.absolute($0.path)) ?? $0.path },
                                 snapshotTo: settings.directory, everySeconds: settings.everySeconds, keep: settings.keep)
            let path = try JobRegistry.add(entry, environment: currentEnvironment())
            registered = (path, TemporaryFiles.register(path))
        }
        defer {
            if let registered {
                unlink(registered.path)
                TemporaryFiles.unregister(registered.slot)
            }
        }
        let status = try restoring.map { try NativeRuntime(restoringFrom: $0).run(job) } ?? runtime.run(job)
        if status != 0 { throw ExitCode(status) }
    }
}

func currentDirectory() -> String {
    guard let path = getcwd(nil, 0) else { return "/" }
    defer { free(path) }
    return String(cString: path)
}

enum JobSnapshotsHost {
    static func name() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

enum NativePlanPaths {
    static func absolute(_ path: String) throws -> String {
        guard let real = realpath(path, nil) else { throw CommandFailure("\(path) not found") }
        defer { free(real) }
        return String(cString: real)
    }
}
