import Ext3
import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// Checking, repairing and growing an image with e2fsprogs, under the same locks Apptainer
/// takes, so nothing runs on an image a job has mounted.
public enum ImageMaintenance {
    /// What a check found: the one line to print, and whether problems remain.
    public struct Report: Sendable, Equatable {
        public var line: String
        public var clean: Bool
    }

    /// Runs `e2fsck -fn` (or `-fy` when `repair`) on `path`. Refuses an image mounted writable
    /// now (and, to repair, one mounted at all). With `repair`, checks again read-only after.
    public static func check(_ path: String, repair: Bool) throws -> Report {
        try requireImage(path)
        let lock = try lockForMaintenance(path, repair ? .write : .read, doing: repair ? "repair" : "check")
        defer { lock.release() }
        let first = try Program.run(["e2fsck", repair ? "-fy" : "-fn", path])
        switch first.status {
        case 0:
            return Report(line: "\(path): clean (\(summary(first.output, path)))", clean: true)
        case 1 where repair, 2 where repair:
            let again = try Program.run(["e2fsck", "-fn", path])
            if again.status == 0 {
                return Report(line: "\(path): repaired (\(firstProblem(first.output) ?? "e2fsck fixed it")); clean now (\(summary(again.output, path)))", clean: true)
            }
            return Report(line: "\(path): e2fsck -fy fixed some problems but not all (\(firstProblem(again.output) ?? "see e2fsck -fn \(path)")); copy the files you need out of it", clean: false)
        case 4 where !repair, 1 where !repair:
            return Report(line: "\(path): damaged: e2fsck found problems (first: \(firstProblem(first.output) ?? "see e2fsck -fn \(path)")); repair it with: overlay check --repair \(path)", clean: false)
        case 4:
            return Report(line: "\(path): e2fsck -fy could not fix it (\(firstProblem(first.output) ?? "see e2fsck -fn \(path)")); copy the files you need out of it", clean: false)
        default:
            return Report(line: "\(path): e2fsck could not check it (exit \(first.status)): \(lastLine(first.output))", clean: false)
        }
    }

    /// What a resize did, in one line.
    public static func grow(_ path: String, to size: ImageSize) throws -> String {
        let info = try requireImage(path)
        let old = UInt64(max(info.st_size, 0))
        if size.bytes < old {
            throw OverlayError.message("\(path) is \(ImageSize.human(old)); overlay resize only grows images (shrinking is not supported): give a size above \(ImageSize.human(old))")
        }
        let superblock = try superblockOf(path)
        let blockSize = UInt64(superblock.blockSize)
        let blocks = size.bytes / blockSize
        if size.bytes == old || blocks <= superblock.blockCount {
            return "\(path): already \(ImageSize.human(old)); nothing to do"
        }
        let lock = try lockForMaintenance(path, .write, doing: "resize")
        defer { lock.release() }
        let before = try usage(path)
        let fsck = try Program.run(["e2fsck", "-fp", path])
        guard fsck.status <= 1 else {
            throw OverlayError.message("\(path) has problems e2fsck -p will not fix (\(firstProblem(fsck.output) ?? lastLine(fsck.output))): run overlay check --repair \(path) first")
        }
        guard ftruncate(lock.fileDescriptor, off_t(size.bytes)) == 0 else {
            throw OverlayError.message("\(path): cannot grow the file to \(size): \(Errno.last)")
        }
        let resize = try Program.run(["resize2fs", path, "\(blocks)"])
        guard resize.status == 0 else {
            // Give the file its old length back when the filesystem still fits in it.
            if let now = try? Ext3.Superblock(path: path), now.blockCount * blockSize <= old {
                _ = ftruncate(lock.fileDescriptor, off_t(old))
            }
            throw OverlayError.message("\(path): resize2fs failed: \(lastLine(resize.output))")
        }
        let after = try usage(path)
        var line = "\(path): grown from \(ImageSize.human(old)) to \(ImageSize.human(size.bytes)); inodes \(ImageInfo.grouped(before.inodeCount)) -> \(ImageInfo.grouped(after.inodeCount)), \(ImageSize.human(after.freeBytes)) free for data"
        if after.inodeCount == before.inodeCount, superblock.blocksPerGroup > 0 {
            // New inodes come only with new block groups: the growth stayed inside the last one.
            let groupBytes = UInt64(superblock.blocksPerGroup) * blockSize
            let groups = (superblock.blockCount + UInt64(superblock.blocksPerGroup) - 1) / UInt64(superblock.blocksPerGroup)
            line += " (no new files: inodes come with each new block group of \(ImageSize.human(groupBytes)); "
                + "grow it to \(ImageSize.human((groups + 1) * groupBytes)) or more for room for \(ImageInfo.grouped(UInt64(superblock.inodesPerGroup))) more)"
        }
        return line
    }

    // MARK: - Pieces

    @discardableResult
    static func requireImage(_ path: String) throws -> stat {
        let info = try regularFile(path)
        _ = try superblockOf(path)
        return info
    }

    /// The file's stat, refusing a missing path and anything but a regular file in one line.
    static func regularFile(_ path: String) throws -> stat {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw OverlayError.message("\(path): \(Errno.last): give an overlay image file")
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw OverlayError.message("\(path) is not a file: give an ext3 overlay image")
        }
        return info
    }

    static func superblockOf(_ path: String) throws -> Ext3.Superblock {
        do {
            return try Ext3.Superblock(path: path)
        } catch let error as Ext3.Error {
            throw OverlayError.message(ImageInfo.explain(error, path))
        }
    }

    static func usage(_ path: String) throws -> Ext3.Usage {
        do {
            let image = try Ext3.Image(path: path)
            defer { try? image.close() }
            return try image.usage()
        } catch let error as Ext3.Error {
            throw OverlayError.message(ImageInfo.explain(error, path))
        }
    }

    static func lockForMaintenance(_ path: String, _ kind: ImageLock.Kind, doing verb: String) throws -> ImageLock {
        do {
            return try ImageLock.acquire(path, kind)
        } catch OverlayError.imageInUse(_, let heldForWriting, _) {
            if heldForWriting {
                throw OverlayError.message("\(path) is mounted writable now (write lock): \(verb) it when that job has finished")
            }
            throw OverlayError.message("\(path) is mounted read-only now (read lock): \(verb) it when no job uses it")
        }
    }

    /// e2fsck's closing summary ("11/16384 files (0.0% non-contiguous), 5404/65536 blocks").
    static func summary(_ output: String, _ path: String) -> String {
        let line = output.split(separator: "\n").last { $0.contains(" files (") && $0.contains(" blocks") }
        guard let line, let colon = String(line).lastOccurrence(of: ": ") else { return "e2fsck found no problem" }
        return String(String(line)[colon...].dropFirst(2)).trimmingWhitespace()
    }

    /// The first problem e2fsck reports, without its question ("Fix? no").
    static func firstProblem(_ output: String) -> String? {
        for raw in output.split(separator: "\n") {
            let line = String(raw).trimmingWhitespace()
            if line.isEmpty || line.hasPrefix("e2fsck ") || line.hasPrefix("Pass ") || line.hasPrefix("*****")
                || line.contains(" files (") || line.hasPrefix("WARNING") || line.hasPrefix("Warning")
                || line.hasPrefix("Running additional passes") || line.hasPrefix("Restarting") { continue }
            var text = line
            if text.hasSuffix("? no") || text.hasSuffix("? yes"), let question = text.lastOccurrence(of: "  ") {
                text = String(text[..<question])
            }
            return text.trimmingWhitespace()
        }
        return nil
    }

    static func lastLine(_ output: String) -> String {
        output.split(separator: "\n").last.map { String($0).trimmingWhitespace() } ?? "no output"
    }
}

extension String {
    /// Where the last occurrence of `needle` starts.
    func lastOccurrence(of needle: String) -> String.Index? {
        let hay = Array(utf8), pin = Array(needle.utf8)
        guard !pin.isEmpty, hay.count >= pin.count else { return nil }
        for start in stride(from: hay.count - pin.count, through: 0, by: -1) where Array(hay[start..<start + pin.count]) == pin {
            return utf8.index(utf8.startIndex, offsetBy: start)
        }
        return nil
    }
}
