import Ext3
import LinuxSupport
import Overlay
import Pack
import Snapshot

#if canImport(Glibc)
import Glibc
#endif

/// `--writable-dir` in job snapshots: each live host directory the job writes into is copied
/// while the job is frozen for the cut (``JobSnapshotter/take(job:trigger:killAfterCut:)``), so
/// it shows the same instant as the writable overlay, and packed into the snapshot at its
/// absolute path (`upper/<path>`, opaque, as `overlay snapshot create` places a directory).
extension JobSnapshotter {
    /// Where one snapshot's copies of the writable dirs are staged while it is made.
    static func stagingDirectory(_ directory: String, stamp: String) -> String {
        directory + "/.\(stamp).dirs.\(getpid())"
    }

    /// While the job is frozen: copies each writable dir into `staging/0`, `staging/1`, ...
    /// with `cp -a --reflink=auto` (each file a reflink where the filesystem can, else a copy;
    /// owners, modes, times, links and extended attributes kept).
    func stageWritableDirs(into staging: String) throws {
        guard mkdir(staging, 0o700) == 0 else {
            throw RuntimeError.failed("cannot make \(staging) to copy the --writable-dir directories into: \(Errno.last)")
        }
        let cp = findExecutable("cp") ?? "/bin/cp"
        for (index, directory) in writableDirs.enumerated() {
            let copy = { try ProgramRunner.run(cp, ["cp", "-a", "--reflink=auto", "--", directory, staging + "/\(index)"]) }
            // In FUSE mode (a user namespace) the setup process cannot go back to its own PID
            // namespace; cp then runs in the job's, which it leaves again at once.
            let result = try fuse == nil ? Self.inOwnPIDNamespace(copy) : copy()
            guard result.status == 0 else {
                let reason = result.output.split(whereSeparator: \.isNewline).first.map(String.init) ?? "status \(result.status)"
                throw RuntimeError.failed("cannot copy --writable-dir \(Escaped.terminal(directory)): \(Escaped.terminal(reason))")
            }
        }
    }

    /// After the job goes on: a new image (an unnamed file in `directory`) holding the image
    /// copy `copy`'s upper/ with each staged writable dir grafted at its path, both taken
    /// through `filter` when there is one (an overlay path relative to upper/, a writable dir's
    /// relative to the directory itself), and an empty work/; and how many entries upper/ holds.
    /// With `inChild` (FUSE mode), a child process builds it (``buildInChild(in:_:)``).
    static func withWritableDirs(copy: Int32, staging: String, directories: [String], filter: SnapshotFilter?,
                                 owner: Ext3.Owner, in directory: String, inChild: Bool = false) throws -> (fd: Int32, entries: Int) {
        if inChild {
            return try buildInChild(in: directory) { output in
                try grafted(copy: copy, staging: staging, directories: directories, filter: filter, owner: owner) {
                    try write($0, to: output)
                }
            }
        }
        return try inOwnPIDNamespace {
            try grafted(copy: copy, staging: staging, directories: directories, filter: filter, owner: owner) {
                try write($0, in: directory)
            }
        }
    }

    /// `body` given the contents of the image copy `copy` with each staged writable dir
    /// grafted at its path (the copy stays open while `body` runs: the contents read from it).
    static func grafted<T>(copy: Int32, staging: String, directories: [String], filter: SnapshotFilter?,
                           owner: Ext3.Owner, _ body: (Ext3.ImageContents) throws -> T) throws -> T {
        let image = try Ext3.Image(path: "/proc/self/fd/\(copy)")
        defer { try? image.close() }
        var contents = try Ext3.ImageContents(image: image)
        if let filter { contents = contents.pruned(taking: filter.takes) }
        var sources: [Ext3.PackSource] = []
        for (index, path) in directories.enumerated() {
            var source = try Ext3.PackSource(directoryOnThisThread: staging + "/\(index)")
            if let filter { source.prune(taking: filter.takes) }
            try source.placeAsCaptured(at: path, owner: owner)
            sources.append(source)
        }
        let merged = try Ext3.PackSource.merging(sources, path: directories.joined(separator: ", "))
        return try body(try contents.grafting(merged.tree))
    }

    /// `contents` formatted into a new unnamed file in `directory`, sized to what it holds
    /// with room for the description; and how many entries its upper/ holds.
    static func write(_ contents: Ext3.ImageContents, in directory: String) throws -> (fd: Int32, entries: Int) {
        let output = FileCalls.openUnnamed(in: directory, mode: 0o644)
        guard output >= 0 else { throw RuntimeError.failed("cannot make a file in \(directory): \(Errno.last)") }
        do {
            return (output, try write(contents, to: output))
        } catch {
            close(output)
            throw error
        }
    }

    /// `contents` formatted into `output` (an empty file), sized to what it holds with room for
    /// the description and a little more; how many entries its upper/ holds.
    static func write(_ contents: Ext3.ImageContents, to output: Int32) throws -> Int {
        let inodes = contents.inodesNeeded + 16
        let blocks = contents.blocksNeeded + contents.blocksNeeded / 8 + 64
        let size = try Ext3.PackSource.smallestSize(inodes: inodes, freeBlocks: blocks)
        let top = contents.upper.nodes[0]
        let formatter = try Ext3.Formatter(.init(sizeBytes: size, minimumInodes: inodes, owner: Ext3.Owner(uid: top.uid, gid: top.gid)))
        _ = try formatter.write(contents, to: "/proc/self/fd/\(output)")
        return contents.upper.inodeCount
    }
}

extension JobResume {
    /// The writable dirs a job snapshot holds (`directory` entries of its description).
    static func writableDirs(of description: SnapshotDescription) -> [String] {
        description.captured.filter { $0.kind == "directory" }.map(\.path)
    }

    /// For a restore from a snapshot that holds writable dirs: the restored copy `copy`
    /// rebuilt without them (nor the directories leading to them that are left empty), into a
    /// new unnamed file in `directory`, as large as the overlay `old` and with at least its
    /// inode count `inodes`. The writable dirs are live host directories: they are never put
    /// into the overlay.
    static func withoutWritableDirs(copy: Int32, paths: [String], size: Int64, inodes: UInt64, in directory: String) throws -> Int32 {
        try JobSnapshotter.inOwnPIDNamespace {
            let image = try Ext3.Image(path: "/proc/\(getpid())/fd/\(copy)")
            defer { try? image.close() }
            let contents = try Ext3.ImageContents(image: image).removing(paths.map { String($0.drop { $0 == "/" }) })
            let needed = try Ext3.PackSource.smallestSize(inodes: contents.inodesNeeded + 16,
                                                          freeBlocks: contents.blocksNeeded + contents.blocksNeeded / 8 + 64)
            let top = contents.upper.nodes[0]
            let formatter = try Ext3.Formatter(.init(sizeBytes: max(UInt64(size), needed), minimumInodes: max(inodes, contents.inodesNeeded + 16),
                                                     owner: Ext3.Owner(uid: top.uid, gid: top.gid)))
            let output = FileCalls.openUnnamed(in: directory, mode: 0o600)
            guard output >= 0 else { throw RuntimeError.failed("cannot make a file in \(directory): \(Errno.last)") }
            do {
                _ = try formatter.write(contents, to: "/proc/\(getpid())/fd/\(output)")
            } catch {
                close(output)
                throw error
            }
            return output
        }
    }

    /// What `--resume` says about the writable dirs: they are left as they are, and how to get
    /// their files back by hand from the snapshot `DIR/latest` names, when it holds them.
    public static func writableDirsNote(_ directories: [String], settings: JobSnapshotSettings) -> String? {
        guard !directories.isEmpty else { return nil }
        let shown = directories.map { Escaped.terminal($0) }.joined(separator: ", ")
        guard let resolved = realpath(settings.directory + "/latest", nil) else {
            return "note: --writable-dir \(shown) left as it is (writable dirs are never rolled back)"
        }
        let snapshot = String(cString: resolved)
        free(resolved)
        guard let description = try? SnapshotStore.describe(snapshot), !writableDirs(of: description).isEmpty else {
            return "note: --writable-dir \(shown) left as it is (writable dirs are never rolled back; \(Escaped.terminal(snapshot)) does not hold them)"
        }
        let held = writableDirs(of: description)
        let example = Escaped.terminal(held[0])
        let file = Escaped.terminal(snapshot)
        return "note: --writable-dir \(shown) left as it is (writable dirs are never rolled back); \(file) holds \(held.map { Escaped.terminal($0) }.joined(separator: ", ")) as it was then: see it with overlay ls \(file) /upper\(example), put it back by hand with mount -o loop,ro \(file) /mnt && cp -a /mnt/upper\(example)/. \(example)/"
    }
}
