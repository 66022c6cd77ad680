import Ext3
import LinuxSupport
import Overlay
import Pack
#if canImport(Glibc)
import Glibc
#endif

/// Makes one snapshot in a store: directories packed at their absolute paths, an overlay image
/// copied, or a git working tree recorded as a commit. Built in an unnamed file and linked as
/// `<store>/NAME.ext3` only when complete, so a failure leaves no file behind.
public struct SnapshotCapture: Sendable {
    public let store: SnapshotStore
    public let name: String
    /// Who owns upper/ and work/ (the invoking user; after sudo, the user who ran it), and who
    /// gets the image file (nil: whoever makes it).
    public let owner: Ext3.Owner
    public let imageOwner: Ext3.Owner?

    public init(store: SnapshotStore, name: String, owner: Ext3.Owner, imageOwner: Ext3.Owner?) throws {
        try SnapshotStore.validate(name: name)
        self.store = store
        self.name = name
        self.owner = owner
        self.imageOwner = imageOwner
    }

    public var target: String { store.path(of: name) }

    /// What a PATH is: a directory, or an overlay image file.
    public enum PathKind: Equatable, Sendable { case directory, image }

    /// The absolute, resolved path and its kind; a missing PATH or one that is neither is refused.
    public static func classify(_ path: String) throws -> (path: String, kind: PathKind) {
        var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard realpath(path, &resolved) != nil else {
            throw SnapshotError("\(path) does not exist (\(Errno.last)): give an existing directory or overlay image to capture")
        }
        let absolute = String(decoding: resolved.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var info = stat()
        guard stat(absolute, &info) == 0 else {
            throw SnapshotError("\(path) cannot be read (\(Errno.last)): give a directory or overlay image you can read")
        }
        switch info.st_mode & S_IFMT {
        case S_IFDIR:
            guard absolute != "/" else {
                throw SnapshotError("/ cannot be captured whole: give the directories the job needs (e.g. your project directory)")
            }
            return (absolute, .directory)
        case S_IFREG:
            guard let image = try? Ext3.Image(path: absolute) else {
                throw SnapshotError("\(path) is a file but not an overlay image: give a directory, or an .ext3 overlay image")
            }
            defer { try? image.close() }
            guard (try? image.lookup("/upper"))?.kind == .directory else {
                throw SnapshotError("\(path) is an ext3 image without upper/ (not an overlay): give a directory, or an overlay image")
            }
            return (absolute, .image)
        default:
            throw SnapshotError("\(path) is neither a directory nor an overlay image")
        }
    }

    func checkFree() throws {
        var info = stat()
        if lstat(target, &info) == 0 {
            throw SnapshotError("snapshot '\(name)' exists already in \(store.directory): choose another name, or remove it first (overlay snapshot rm \(name))")
        }
        try store.create()
    }

    /// Captures directories (absolute, resolved; none inside another) into one image.
    public func capture(directories: [String], created: String, host: String, user: String) throws -> SnapshotDescription {
        for (index, first) in directories.enumerated() {
            for second in directories[(index + 1)...] where first == second || second.hasPrefix(first + "/") || first.hasPrefix(second + "/") {
                throw SnapshotError(first == second ? "\(first) is given twice: give it once"
                                    : "\(first) and \(second): one lies inside the other: give only the outer one")
            }
        }
        try checkFree()
        var sources: [Ext3.PackSource] = []
        for directory in directories {
            var source = try Ext3.PackSource(path: directory)
            try source.placeAsCaptured(at: directory, owner: owner)
            sources.append(source)
        }
        let merged = try Ext3.PackSource.merging(sources, path: directories.joined(separator: ", "))
        let captured = directories.map { SnapshotDescription.Captured(path: $0, kind: "directory") }
        return try write(merged, captured: captured, git: nil, created: created, host: host, user: user)
    }

    /// Packs `source` (already placed) with its description and links it into the store.
    func write(_ source: Ext3.PackSource, captured: [SnapshotDescription.Captured], git: SnapshotDescription.GitRecord?,
               created: String, host: String, user: String) throws -> SnapshotDescription {
        let plan = try source.snugPlan()
        let formatter = try Ext3.Formatter(Ext3.Formatter.Configuration(
            sizeBytes: plan.sizeBytes, minimumInodes: plan.inodes, owner: owner, directories: [], imageOwner: imageOwner))
        let description = SnapshotDescription(
            name: name, created: created, host: host, user: user, captured: captured, git: git,
            sizeBytes: plan.sizeBytes, entries: source.inodesNeeded, dataBytes: source.fileBytes)
        let file = Ext3.RootFile(name: SnapshotDescription.fileName, contents: Array((description.json + "\n").utf8), owner: owner)
        do {
            _ = try formatter.create(at: target, packing: source, rootFiles: [file])
        } catch Ext3.Error.exists {
            throw SnapshotError("snapshot '\(name)' exists already in \(store.directory): choose another name, or remove it first (overlay snapshot rm \(name))")
        }
        chmod(target, 0o444)
        return description
    }

    /// Captures an overlay image: a reflink copy where the filesystem can, else a copy of its
    /// allocated blocks only. Refused while a job has it mounted writable; a read lock is held
    /// while it is copied, so no job can start writing it meanwhile.
    public func capture(image: String, created: String, host: String, user: String) throws -> SnapshotDescription {
        try checkFree()
        let lock: ImageLock
        do { lock = try ImageLock.acquire(image, .read) } catch OverlayError.imageInUse {
            throw SnapshotError("\(image) is mounted writable by a running job: capture it when the job has ended (or capture it with :ro jobs only)")
        }
        defer { lock.release() }
        let input = open(image, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw SnapshotError("cannot read \(image): \(Errno.last)") }
        defer { close(input) }
        var info = stat()
        fstat(input, &info)
        let output = FileCalls.openUnnamed(in: store.directory, mode: 0o644)
        guard output >= 0 else { throw SnapshotError("cannot make a file in the snapshot store \(store.directory): \(Errno.last)") }
        defer { close(output) }
        var editor: Ext3.RootFileEditor?
        if FileCalls.cloneFile(output, from: input) != 0 {
            editor = try SnapshotCapture.copyAllocated(from: input, to: output, size: Int64(info.st_size), path: image, openingCopy: true)
        }
        if let imageOwner { fchown(output, imageOwner.uid, imageOwner.gid) }
        let description = SnapshotDescription(
            name: name, created: created, host: host, user: user,
            captured: [SnapshotDescription.Captured(path: image, kind: "image")], git: nil,
            sizeBytes: UInt64(info.st_size), entries: 0, dataBytes: UInt64(info.st_blocks) * 512)
        let file = Ext3.RootFile(name: SnapshotDescription.fileName, contents: Array((description.json + "\n").utf8), owner: owner)
        // The copy may already describe a snapshot (a snapshot of a snapshot): replace that.
        try (editor ?? Ext3.RootFileEditor(path: "/proc/self/fd/\(output)")).add(file, replacing: true)
        fchmod(output, 0o444)
        guard FileCalls.linkUnnamed(output, to: target) == 0 else {
            if errno == EEXIST { throw SnapshotError("snapshot '\(name)' exists already in \(store.directory): choose another name") }
            throw SnapshotError("cannot link the snapshot into \(store.directory): \(Errno.last)")
        }
        return description
    }

    /// Copies an overlay image without reflink: only what its filesystem uses. The ranges its
    /// block bitmaps mark in use (``Ext3/UsedBlocks``), where the image file has data
    /// (SEEK_DATA/SEEK_HOLE: blocks never written read as zeros and stay holes), copied in long
    /// runs by copy_file_range (pread/pwrite where the kernel cannot copy between these files);
    /// everything else stays a hole. Free blocks, a deleted file's among them, are not copied.
    /// When the bitmaps cannot be trusted (the journal needs replaying) or read, every data
    /// region of the file is copied instead.
    ///
    /// With `openingCopy`, the copy is opened with libext2fs for a root file (the description)
    /// as soon as its superblock and group descriptors are in, before the rest: libext2fs
    /// fsyncs what it opens, which would otherwise wait for the whole copy to reach the disk.
    /// Nothing is synced: like cp, the data is left to the kernel's writeback.
    @discardableResult
    public static func copyAllocated(from input: Int32, to output: Int32, size: Int64, path: String,
                                     openingCopy: Bool = false) throws -> Ext3.RootFileEditor? {
        guard ftruncate(output, off_t(size)) == 0 else { throw SnapshotError("cannot size the copy of \(path): \(Errno.last)") }
        let (ranges, headBytes) = allocatedRanges(of: input, size: size)
        var copier = RangeCopier(input: input, output: output, path: path)
        var editor: Ext3.RootFileEditor?
        var start: Int64 = 0
        if openingCopy, let headBytes {
            try copier.copy(0..<headBytes)
            start = headBytes
            editor = try Ext3.RootFileEditor(path: "/proc/self/fd/\(output)")
        }
        for range in ranges where range.upperBound > start {
            try copier.copy(max(range.lowerBound, start)..<range.upperBound)
        }
        if openingCopy && editor == nil { editor = try Ext3.RootFileEditor(path: "/proc/self/fd/\(output)") }
        return editor
    }

    /// What ``copyAllocated(from:to:size:path:openingCopy:)`` copies of an image, in order:
    /// the ranges its bitmaps mark in use where the file has data (every data region when the
    /// bitmaps cannot be read), and the length of its superblock and group descriptors (nil
    /// without bitmaps).
    public static func allocatedRanges(of input: Int32, size: Int64) -> (ranges: [Range<Int64>], headBytes: Int64?) {
        let used = Ext3.UsedBlocks.read(fd: input, fileSize: size)
        var ranges: [Range<Int64>] = []
        var offset: Int64 = 0
        var next = 0
        while offset < size {
            var data = FileCalls.seekData(input, offset)
            if data < 0 { break }  // ENXIO: only a hole is left
            var hole = FileCalls.seekHole(input, data)
            if hole < 0 || hole > size { hole = size }
            data = max(data, offset)
            if let used {
                while next < used.ranges.count && used.ranges[next].upperBound <= data { next += 1 }
                var index = next
                while index < used.ranges.count && used.ranges[index].lowerBound < hole {
                    ranges.append(max(used.ranges[index].lowerBound, data)..<min(used.ranges[index].upperBound, hole))
                    index += 1
                }
            } else {
                ranges.append(data..<hole)
            }
            offset = hole
        }
        return (ranges, used?.headBytes)
    }

    /// Copies byte ranges at the same offsets: copy_file_range, or pread/pwrite once the kernel
    /// says it cannot copy between these two files.
    struct RangeCopier {
        let input: Int32
        let output: Int32
        let path: String
        var buffer: [UInt8] = []

        mutating func copy(_ range: Range<Int64>) throws {
            var inOffset = range.lowerBound
            var outOffset = range.lowerBound
            while buffer.isEmpty && inOffset < range.upperBound {
                let copied = FileCalls.copyFileRange(input, &inOffset, output, &outOffset, Int(min(range.upperBound - inOffset, 1 << 30)))
                if copied > 0 { continue }
                if copied == 0 { throw SnapshotError("cannot copy \(path) into the snapshot store: it ended early (was it truncated?)") }
                switch errno {
                case EINTR: continue
                case EXDEV, EINVAL, EOPNOTSUPP, ENOSYS: buffer = [UInt8](repeating: 0, count: 8 << 20)
                default: throw SnapshotError("cannot copy \(path) into the snapshot store: \(Errno.last)")
                }
            }
            while inOffset < range.upperBound {
                let length = Int(min(range.upperBound - inOffset, Int64(buffer.count)))
                let read = buffer.withUnsafeMutableBytes { pread(input, $0.baseAddress, length, off_t(inOffset)) }
                if read < 0 && errno == EINTR { continue }
                guard read > 0 else {
                    throw SnapshotError("cannot copy \(path) into the snapshot store: \(read == 0 ? "it ended early (was it truncated?)" : "\(Errno.last)")")
                }
                var done = 0
                while done < read {
                    let written = buffer.withUnsafeBytes { pwrite(output, $0.baseAddress! + done, read - done, off_t(inOffset) + off_t(done)) }
                    if written < 0 && errno == EINTR { continue }
                    guard written > 0 else { throw SnapshotError("cannot write the copy of \(path): \(Errno.last)") }
                    done += written
                }
                inOffset += Int64(read)
            }
        }
    }
}
