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

    /// Grows an image to `size` (nil: keeps its size) with at least its old share of inodes
    /// (old inodes x new size / old size) and at least `files` inodes: in place with resize2fs
    /// where the block groups it adds bring that many, else by rebuilding the image (a new one
    /// of that size and inode count, the files copied over from the old one, checked, and
    /// renamed over it). Refuses shrinking, an inode count the size cannot hold, files that do
    /// not fit, too little free space for a rebuild and an image a job has mounted, each in
    /// one line with nothing changed. What it did, in one line.
    public static func resize(_ path: String, to size: ImageSize?, files: UInt64?) throws -> String {
        let info = try requireImage(path)
        let old = UInt64(max(info.st_size, 0))
        let newBytes = size?.bytes ?? old
        if newBytes < old {
            throw OverlayError.message("\(path) is \(ImageSize.human(old)); overlay resize only grows images (shrinking is not supported): give a size above \(ImageSize.human(old))")
        }
        let superblock = try superblockOf(path)
        let blockSize = UInt64(superblock.blockSize)
        let oldBlocks = superblock.blockCount
        let newBlocks = max(newBytes / blockSize, oldBlocks)
        let oldInodes = UInt64(superblock.inodeCount)
        // The old density, rounded up; and the count asked for.
        var target = oldBlocks > 0 ? (oldInodes * newBlocks + oldBlocks - 1) / oldBlocks : oldInodes
        if let files { target = max(target, files) }
        let grows = newBlocks > oldBlocks
        if !grows && target <= oldInodes {
            if let files {
                return "\(path): already has \(ImageInfo.grouped(oldInodes)) inodes (\(ImageInfo.grouped(files)) asked for); nothing to do"
            }
            return "\(path): already \(ImageSize.human(old)); nothing to do"
        }
        let newSize = grows ? newBlocks * blockSize : old
        // A rebuild's layout, checked before anything changes.
        let geometry: Ext3.Geometry?
        if target > predictedInodes(superblock, blocks: newBlocks) {
            geometry = try layout(path, sizeBytes: newSize, inodes: target, asked: files)
        } else {
            geometry = nil
        }
        let lock = try lockForMaintenance(path, .write, doing: "resize")
        defer { lock.release() }
        let before = try usage(path)
        if let geometry {
            // The old image is only read: it stays exactly as it is unless the new one replaces it.
            return try rebuild(path, old: old, sizeBytes: newSize, geometry: geometry, inodes: target, before: before)
        }
        let fsck = try Program.run(["e2fsck", "-fp", path])
        guard fsck.status <= 1 else {
            throw OverlayError.message("\(path) has problems e2fsck -p will not fix (\(firstProblem(fsck.output) ?? lastLine(fsck.output))): run overlay check --repair \(path) first")
        }
        guard ftruncate(lock.fileDescriptor, off_t(newSize)) == 0 else {
            throw OverlayError.message("\(path): cannot grow the file to \(ImageSize.human(newSize)): \(Errno.last)")
        }
        let resize = try Program.run(["resize2fs", path, "\(newBlocks)"])
        guard resize.status == 0 else {
            // Give the file its old length back when the filesystem still fits in it.
            if let now = try? Ext3.Superblock(path: path), now.blockCount * blockSize <= old {
                _ = ftruncate(lock.fileDescriptor, off_t(old))
            }
            throw OverlayError.message("\(path): resize2fs failed: \(lastLine(resize.output))")
        }
        let after = try usage(path)
        if after.inodeCount < target {
            // resize2fs made fewer groups than foreseen: rebuild at the new size.
            let geometry = try layout(path, sizeBytes: newSize, inodes: target, asked: files)
            return try rebuild(path, old: old, sizeBytes: newSize, geometry: geometry, inodes: target, before: before)
        }
        return "\(path): grown from \(ImageSize.human(old)) to \(ImageSize.human(newSize)) in place; inodes \(ImageInfo.grouped(before.inodeCount)) -> \(ImageInfo.grouped(after.inodeCount)), \(ImageSize.human(after.freeBytes)) free for data"
    }

    /// The inodes resize2fs gives an image grown to `blocks`: as many per group as the old
    /// groups, for every whole new group and a last part large enough for its own tables
    /// (counted only when it is surely kept).
    static func predictedInodes(_ superblock: Ext3.Superblock, blocks: UInt64) -> UInt64 {
        let perGroup = UInt64(superblock.blocksPerGroup)
        guard perGroup > 0 else { return UInt64(superblock.inodeCount) }
        let tableBlocks = UInt64(superblock.inodesPerGroup) * UInt64(superblock.inodeSize) / UInt64(superblock.blockSize)
        var groups = blocks / perGroup
        // Bitmaps, inode table, a backup superblock with descriptors and reserved descriptor
        // blocks (at most 1,024), and resize2fs's 50 blocks of slack.
        if blocks % perGroup >= tableBlocks + 2 + 1 + 1024 + 50 { groups += 1 }
        return max(groups * UInt64(superblock.inodesPerGroup), UInt64(superblock.inodeCount))
    }

    /// The layout of a rebuilt image, or a one-line refusal naming the most inodes the size holds.
    static func layout(_ path: String, sizeBytes: UInt64, inodes: UInt64, asked: UInt64?) throws -> Ext3.Geometry {
        do {
            return try Ext3.Geometry(sizeBytes: sizeBytes, inodes: inodes)
        } catch {
            let most = Ext3.Geometry.maximumInodes(sizeBytes: sizeBytes)
            if most >= inodes || most == 0, let error = error as? Ext3.Error {
                throw OverlayError.message("\(path): \(error.description)")  // not the inodes: the size itself
            }
            let what = asked.map { "-n \($0 / 1000): " } ?? ""
            throw OverlayError.message("\(path): \(what)\(ImageInfo.grouped(inodes)) inodes do not fit in \(ImageSize.human(sizeBytes)): "
                + "it holds at most \(ImageInfo.grouped(most)) (-n \(most / 1000)); give a larger -s or a smaller -n")
        }
    }

    /// Builds a new image of `sizeBytes` with `inodes` inodes holding everything the old one
    /// holds (which must pass e2fsck -fn: it is only read), checks the new one with e2fsck -fn
    /// and renames it over the old one (under the caller's write lock).
    static func rebuild(_ path: String, old: UInt64, sizeBytes: UInt64, geometry: Ext3.Geometry, inodes: UInt64,
                        before: Ext3.Usage) throws -> String {
        let fsck = try Program.run(["e2fsck", "-fn", path])
        guard fsck.status == 0 else {
            throw OverlayError.message("\(path) is not clean (\(firstProblem(fsck.output) ?? lastLine(fsck.output))): run overlay check --repair \(path) first; the image is unchanged")
        }
        let copied: Int
        do {
            let image = try Ext3.Image(path: path)
            defer { try? image.close() }
            let contents = try Ext3.ImageContents(image: image)
            let owner = contents.upper.nodes[0]
            let formatter = try Ext3.Formatter(.init(sizeBytes: sizeBytes, minimumInodes: inodes,
                                                     owner: Ext3.Owner(uid: owner.uid, gid: owner.gid)))
            let free = geometry.freeBlocks() * UInt64(Ext3.blockSize)
            let needed = contents.blocksNeeded * UInt64(Ext3.blockSize)
            guard contents.blocksNeeded <= geometry.freeBlocks() else {
                throw OverlayError.message("\(path): its files take up to \(ImageSize.human(needed)), but \(ImageSize.human(sizeBytes)) with \(ImageInfo.grouped(geometry.inodeCount)) inodes leaves \(ImageSize.human(free)) for them: give a larger -s or a smaller -n")
            }
            try requireRoom(path, bytes: writtenBytes(geometry, contents))
            _ = try formatter.replace(path, with: contents) { built in
                let check = try Program.run(["e2fsck", "-fn", built])
                guard check.status == 0 else {
                    throw OverlayError.message("\(path): the rebuilt image fails e2fsck -fn (\(firstProblem(check.output) ?? lastLine(check.output))); the image is unchanged")
                }
            }
            copied = contents.upper.inodeCount + contents.work.inodeCount
        } catch let error as Ext3.Error {
            throw OverlayError.message("\(ImageInfo.explain(error, path)); the image is unchanged")
        }
        let after = try usage(path)
        let what = sizeBytes > old ? "grown from \(ImageSize.human(old)) to \(ImageSize.human(sizeBytes))" : "kept at \(ImageSize.human(sizeBytes))"
        return "\(path): \(what) and rebuilt with more inodes (\(ImageInfo.grouped(UInt64(copied))) files and directories copied); "
            + "inodes \(ImageInfo.grouped(before.inodeCount)) -> \(ImageInfo.grouped(after.inodeCount)), \(ImageSize.human(after.freeBytes)) free for data"
    }

    /// Bytes a rebuild writes (an upper bound): the files, group tables but for the unused
    /// parts of the inode tables, the used inodes, the journal's map and a margin.
    static func writtenBytes(_ geometry: Ext3.Geometry, _ contents: Ext3.ImageContents) -> UInt64 {
        let tables = geometry.inodeTableBlocksPerGroup * geometry.groupCount
        let metadata = geometry.groupMetadataBlocks - min(tables, geometry.groupMetadataBlocks)
            + (contents.inodesNeeded + 15) / 16 + geometry.journalMapBlocks + 256
        return (contents.blocksNeeded + metadata) * UInt64(Ext3.blockSize)
    }

    /// Refuses when the filesystem holding `path` has less than `bytes` free for this user.
    static func requireRoom(_ path: String, bytes: UInt64) throws {
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) }.map { $0.isEmpty ? "/" : $0 } ?? "."
        var info = statvfs()
        guard statvfs(directory, &info) == 0 else { return }
        let available = UInt64(info.f_bavail) * UInt64(info.f_frsize)
        guard available >= bytes else {
            throw OverlayError.message("\(path): rebuilding it needs about \(ImageSize.human(bytes)) free in \(directory), which has \(ImageSize.human(available)): free some space there first; the image is unchanged")
        }
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
