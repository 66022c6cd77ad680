import Ext3
import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

/// A copy of an overlay image's used blocks made in two steps, so that a stopped job waits for
/// the first only: ``read(from:into:size:path:)`` reads the blocks into memory made ready
/// beforehand (a copy from the page cache into pages already in place), and
/// ``writeOut(to:path:)``, once the job goes on, writes them to the copy at their offsets.
/// Writing the copy in the pause would make the job wait for the page cache to find room for
/// every block of it, which on a busy machine costs several times the read.
///
/// The memory is bounded (``budget()``): a quarter of what the machine has available, half of
/// what the memory cgroup still allows (a SLURM job's limit covers run-overlay too), and 4 GiB,
/// or `OVERLAY_SNAPSHOT_MEMORY_MIB` instead of 4 GiB when that is set (0: never stage). What
/// does not fit is copied straight to the copy in the pause, as
/// ``SnapshotCapture/copyAllocated(from:to:size:path:openingCopy:)`` does.
public final class StagedCopy {
    private let memory: UnsafeMutableRawPointer
    private let capacity: Int
    /// Staged ranges: file offset, length, position in memory (page-aligned, for O_DIRECT).
    private var pieces: [(offset: Int64, length: Int, at: Int)] = []
    /// The length of the image's superblock and group descriptors, when its bitmaps were read.
    private var headBytes: Int64?

    private init(memory: UnsafeMutableRawPointer, capacity: Int) {
        self.memory = memory
        self.capacity = capacity
    }

    deinit { munmap(memory, capacity) }

    /// Memory for what a copy of the image behind `input` would take now, with room for the
    /// job to write more before the pause, touched in advance, at most `budget` bytes (what
    /// does not fit is copied directly); nil when the budget is under a megabyte or the memory
    /// cannot be had.
    public static func prepare(input: Int32, size: Int64, budget: Int64 = StagedCopy.budget()) -> StagedCopy? {
        let ranges = SnapshotCapture.allocatedRanges(of: input, size: size).ranges
        let bytes = ranges.reduce(Int64(0)) { $0 + Int64($1.count) } + Int64(ranges.count) * 4096
        let wanted = bytes + max(bytes / 32, 32 << 20)
        guard bytes > 0, budget >= 1 << 20 else { return nil }
        let capacity = Int(min(wanted, budget)) & ~4095
        let memory = mmap(nil, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
        guard let memory, memory != MAP_FAILED else { return nil }
        return StagedCopy(memory: memory, capacity: capacity)
    }

    /// Reads the image's used blocks (as they are now: the job is stopped and its filesystem
    /// frozen) into memory; what does not fit is copied into `output` directly.
    public func read(from input: Int32, into output: Int32, size: Int64, path: String) throws {
        guard ftruncate(output, off_t(size)) == 0 else { throw SnapshotError("cannot size the copy of \(path): \(Errno.last)") }
        var copier = SnapshotCapture.RangeCopier(input: input, output: output, path: path)
        pieces = []  // a read made again (FUSE mode's retries) starts over
        var position = 0
        let (ranges, headBytes) = SnapshotCapture.allocatedRanges(of: input, size: size)
        self.headBytes = headBytes
        for range in ranges {
            let length = Int(range.count)
            guard position + length <= capacity else {
                try copier.copy(range)
                continue
            }
            var done = 0
            while done < length {
                let got = pread(input, memory + position + done, length - done, off_t(range.lowerBound) + off_t(done))
                if got < 0 && errno == EINTR { continue }
                guard got > 0 else {
                    throw SnapshotError("cannot copy \(path) into the snapshot store: \(got == 0 ? "it ended early (was it truncated?)" : "\(Errno.last)")")
                }
                done += got
            }
            pieces.append((range.lowerBound, length, position))
            position = (position + length + 4095) & ~4095
        }
    }

    /// Writes what was read into `output` at the same offsets: with O_DIRECT where the
    /// filesystem takes it (the data goes to the disk without filling the page cache again),
    /// otherwise through the page cache. Nothing is synced, as with cp.
    ///
    /// With `openingCopy`, the copy is opened for a root file (the description) once its
    /// superblock and group descriptors are written, before the rest: libext2fs fsyncs what
    /// it opens, which would otherwise wait for the whole copy to reach the disk.
    @discardableResult
    public func writeOut(to output: Int32, path: String, openingCopy: Bool = false) throws -> Ext3.RootFileEditor? {
        let direct = open("/proc/self/fd/\(output)", O_WRONLY | 0o40000 /* O_DIRECT */ | O_CLOEXEC)
        defer { if direct >= 0 { close(direct) } }
        var target = direct >= 0 ? direct : output
        func write(_ piece: (offset: Int64, length: Int, at: Int), from start: Int, to end: Int) throws {
            var done = start
            while done < end {
                let written = pwrite(target, memory + piece.at + done, end - done, off_t(piece.offset) + off_t(done))
                if written < 0 && errno == EINTR { continue }
                if written < 0 && errno == EINVAL && target == direct {
                    target = output  // an alignment O_DIRECT does not take here
                    continue
                }
                guard written > 0 else { throw SnapshotError("cannot write the copy of \(path): \(Errno.last)") }
                done += written
            }
        }
        // The head first: the part of each piece below `headBytes`.
        let head = openingCopy ? headBytes ?? 0 : 0
        for piece in pieces where piece.offset < head {
            try write(piece, from: 0, to: Int(min(Int64(piece.length), head - piece.offset)))
        }
        let editor = openingCopy ? try Ext3.RootFileEditor(path: "/proc/self/fd/\(output)") : nil
        for piece in pieces where piece.offset + Int64(piece.length) > head {
            try write(piece, from: Int(max(0, head - piece.offset)), to: piece.length)
        }
        pieces = []
        return editor
    }

    /// An image copied whole to `output` while nothing writes it: a reflink where the
    /// filesystem can, else its used blocks, read into `staged` when there is one (written out
    /// later with ``writeOut(to:path:openingCopy:)``), else copied straight to `output`.
    public static func copy(_ input: Int32, to output: Int32, size: Int64, path: String, staged: StagedCopy?) throws {
        guard FileCalls.cloneFile(output, from: input) != 0 else { return }
        if let staged {
            try staged.read(from: input, into: output, size: size, path: path)
        } else {
            try SnapshotCapture.copyAllocated(from: input, to: output, size: size, path: path)
        }
    }

    /// What is wrong with `OVERLAY_SNAPSHOT_MEMORY_MIB`, as one line; nil when it is unset or
    /// a number of MiB.
    public static func settingProblem() -> String? {
        guard let text = getenv("OVERLAY_SNAPSHOT_MEMORY_MIB").map({ String(cString: $0) }), !text.isEmpty,
              mebibytes(text) == nil else { return nil }
        return "OVERLAY_SNAPSHOT_MEMORY_MIB is '\(Escaped.terminal(text))': give the most MiB a job snapshot may stage in memory (0: none)"
    }

    /// The most memory a copy may be staged in by default: past it, the pause's reading from
    /// memory already saves most of what it can, and a node's other jobs keep their memory.
    public static let defaultBound: Int64 = 4 << 30

    /// The most memory a copy may be staged in (bytes).
    public static func budget() -> Int64 {
        budget(setting: getenv("OVERLAY_SNAPSHOT_MEMORY_MIB").map { String(cString: $0) },
               available: memInfo("MemAvailable"), headroom: cgroupHeadroom())
    }

    /// The bound from `OVERLAY_SNAPSHOT_MEMORY_MIB` (`setting`), MemAvailable and the cgroup
    /// headroom (bytes): 0 for a setting that is not a number of MiB or an unknown MemAvailable.
    static func budget(setting: String?, available: Int64?, headroom: Int64?) -> Int64 {
        var budget = defaultBound
        if let setting, !setting.isEmpty {
            guard let mib = mebibytes(setting) else { return 0 }
            budget = mib << 20
        }
        guard let available else { return 0 }
        budget = min(budget, available / 4)
        if let headroom { budget = min(budget, headroom / 2) }
        return max(budget, 0)
    }

    /// The setting as a number of MiB (nil: not one).
    static func mebibytes(_ setting: String) -> Int64? {
        guard let mib = Int64(setting), mib >= 0, mib < 1 << 40 else { return nil }
        return mib
    }

    /// A line of /proc/meminfo, in bytes.
    static func memInfo(_ key: String) -> Int64? {
        guard let text = contents("/proc/meminfo") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(key + ":") {
            let fields = line.split(separator: " ")
            guard fields.count >= 2, let kib = Int64(fields[1]) else { return nil }
            return kib << 10
        }
        return nil
    }

    /// What the memory cgroups of this process and their parents still allow (v2 `memory.max`
    /// less `memory.current`, v1 `memory.limit_in_bytes` less `memory.usage_in_bytes`), the
    /// least of them; nil when no limit is set or none can be read.
    static func cgroupHeadroom() -> Int64? {
        guard let text = contents("/proc/self/cgroup") else { return nil }
        var headroom: Int64?
        func visit(_ base: String, _ path: String, limit: String, usage: String) {
            var directory = path
            while true {
                let at = base + (directory == "/" ? "" : directory)
                if let limit = number(at + "/" + limit), limit < Int64.max / 2, let usage = number(at + "/" + usage) {
                    headroom = min(headroom ?? .max, limit - usage)
                }
                guard directory != "/", !directory.isEmpty else { return }
                directory = String(directory[..<(directory.lastIndex(of: "/") ?? directory.startIndex)])
                if directory.isEmpty { directory = "/" }
            }
        }
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            let path = String(fields[2])
            if fields[0] == "0" && fields[1].isEmpty {
                visit("/sys/fs/cgroup", path, limit: "memory.max", usage: "memory.current")
            } else if fields[1].split(separator: ",").contains("memory") {
                visit("/sys/fs/cgroup/memory", path, limit: "memory.limit_in_bytes", usage: "memory.usage_in_bytes")
            }
        }
        return headroom
    }

    /// A file's first word as a number ("max" and the like: nil).
    static func number(_ path: String) -> Int64? {
        contents(path)?.split(whereSeparator: { $0 == " " || $0 == "\n" }).first.flatMap { Int64($0) }
    }

    /// A small file's text (procfs, cgroupfs), or nil.
    static func contents(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard let bytes = try? IO.readAll(fd, path: path) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }
}
