import Ext3
import LinuxSupport
import Snapshot

#if canImport(Glibc)
import Glibc
#endif

/// The cut in FUSE mode (an ordinary user's run): the writable image is fuse2fs's, which
/// keeps the superblock, the group descriptors, the bitmaps and a small write-back block cache
/// in memory and writes them to the image file only when asked. There is no FIFREEZE on a FUSE
/// mount; instead, with every process of the job stopped (none is inside a request then: a
/// process stops only on its way back to user space):
/// 1. syncfs on the overlay (the job's root) and on fuse2fs's mount writes back what the
///    kernel's page caches hold of them (files the job maps shared), through fuse-overlayfs
///    (or the kernel's overlay) into fuse2fs;
/// 2. fsync on a file fuse2fs has open for writing makes fuse2fs write out everything it holds
///    and fsync the image (fuse2fs 1.47.0's op_fsync: ext2fs_flush2, for a handle opened for
///    writing; no other request makes it flush without changing the filesystem);
/// 3. the image file is copied: nothing writes to it any more, since fuse2fs writes only when
///    a request asks it to, and every writer is stopped.
/// The file fsync'd is ``fileName`` in the image's `work/` (the overlay's scratch directory,
/// which it never shows; the image's root is root's, which a user namespace cannot write), made
/// when the job's snapshots start and removed from the image after the teardown;
/// the copy is then settled (``Ext3/settleLiveCopy(image:removingRootFile:)``): the file
/// removed from it, and its superblock marked clean, as fuse2fs's unmount would.
///
/// One thing can still reach fuse2fs after the flush: a request the kernel sends on its own,
/// such as the release after a close the job made just before it was stopped (fuse2fs's
/// release writes its metadata out again; the FUSE library's release deletes for good a file
/// deleted while open). So the cut checks that fuse2fs answered no request while the image was
/// copied: it answers each by a write to /dev/fuse, which its write-call count in
/// /proc/PID/io shows. When it did, the flush and the copy are made again (the job is still
/// frozen), at most ``attempts`` times.
final class Fuse2fsFlush {
    /// How many times the flush and the copy are tried before the snapshot is given up.
    static let attempts = 3
    /// fuse2fs's pid (nil: not known; the copy is then not checked).
    let driver: Int32?
    /// The file in the image's `work/` that the flush is asked through.
    static let fileName = ".overlay-snapshot-sync"
    static let relativePath = "work/" + fileName

    let mountPoint: String
    let overlayRoot: String
    private var descriptor: Int32
    /// Why the flush file could not be opened (every snapshot then fails, saying so).
    private let openFailure: String?

    /// Opens (making it when missing) the flush file on fuse2fs's mount at `mountPoint`;
    /// `overlayRoot` is the overlay mounted on it (the job's root).
    init(mountPoint: String, overlayRoot: String, driver: Int32?) {
        self.mountPoint = mountPoint
        self.overlayRoot = overlayRoot
        self.driver = driver
        descriptor = open(mountPoint + "/" + Self.relativePath, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        openFailure = descriptor >= 0 ? nil
            : "cannot open /\(Self.relativePath) in the writable image through fuse2fs, to make it write the image out: \(Errno.last)"
    }

    /// With the job frozen: everything the kernel and fuse2fs hold of the image goes into the
    /// image file.
    func flush() throws {
        if let openFailure { throw RuntimeError.failed(openFailure) }
        for path in [overlayRoot, mountPoint] {
            let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard fd >= 0 else { throw RuntimeError.failed("cannot open \(path) to sync it: \(Errno.last)") }
            defer { Glibc.close(fd) }
            guard FileCalls.syncFilesystem(fd) == 0 else {
                throw RuntimeError.failed("cannot sync \(path) (syncfs): \(Errno.last)")
            }
        }
        guard descriptor >= 0, fsync(descriptor) == 0 else {
            throw RuntimeError.failed("fuse2fs could not write the image out (fsync): \(Errno.last)")
        }
    }

    /// Closes the flush file (the job's snapshots are over). It is not removed through the
    /// mount: the kernel sends fuse2fs the file's release on its own, and the FUSE library
    /// turns the removal of a file it still sees open into a rename to `.fuse_hidden...`,
    /// which the unmount can leave behind. ``removeFile(from:)`` removes it once unmounted.
    func finish() {
        guard descriptor >= 0 else { return }
        Glibc.close(descriptor)
        descriptor = -1
    }

    /// After the teardown (fuse2fs gone, the image closed clean): removes the flush file from
    /// the image with libext2fs. A failure leaves only that empty file in `work/`.
    static func removeFile(from image: String) {
        _ = try? Ext3.removeWorkFile(image: image, named: fileName)
    }

    deinit { if descriptor >= 0 { Glibc.close(descriptor) } }
}

extension Fuse2fsFlush {
    /// The cut, with the job frozen: the flush, then the image file copied to `output` (a
    /// reflink where the filesystem holding it can, else its allocated blocks); again when
    /// fuse2fs answered a request meanwhile.
    func cut(from input: Int32, to output: Int32, size: Int64, image: String, staged: StagedCopy? = nil) throws {
        for _ in 1...Self.attempts {
            try flush()
            let before = driver.flatMap(Self.writeCalls)
            guard ftruncate(output, 0) == 0 else { throw RuntimeError.failed("cannot empty the snapshot's file: \(Errno.last)") }
            try StagedCopy.copy(input, to: output, size: size, path: image, staged: staged)
            guard let before else { return }
            if driver.flatMap(Self.writeCalls) == before { return }
        }
        throw RuntimeError.failed("fuse2fs kept answering requests while \(image) was copied (\(Self.attempts) times), so the copy may not be one instant")
    }

    /// The `syscw` of /proc/PID/io: how many write calls the process made.
    static func writeCalls(of pid: Int32) -> Int? {
        guard let text = NativeRuntime.readSmallFile("/proc/\(pid)/io") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("syscw:") {
            return Int(String(line.dropFirst(6)).trimmingWhitespace)
        }
        return nil
    }

    /// Which of `drivers` is the fuse2fs that mounted `mountPoint` (its command line names it).
    static func driver(among drivers: [Int32], mountPoint: String) -> Int32? {
        drivers.first { pid in
            guard let line = NativeRuntime.readSmallFile("/proc/\(pid)/cmdline") else { return false }
            let arguments = line.split(separator: "\0", omittingEmptySubsequences: false).map(String.init)
            return arguments.first.map { $0 == "fuse2fs" || $0.hasSuffix("/fuse2fs") } == true && arguments.contains(mountPoint)
        }
    }
}

extension JobSnapshotter {
    /// FUSE mode: the filtered image (see ``filtered(copy:by:in:)``) is built by a child
    /// process. The image writer needs threads, which the setup process cannot start once it
    /// made the job's PID namespace its children's, and in a user namespace it cannot go back
    /// to its own (setns needs CAP_SYS_ADMIN over the host's); a child it forks is a process
    /// of the job's PID namespace, where threads may start. It writes into an unnamed file this
    /// process made, and says how many entries it wrote, or why it failed, through a pipe.
    static func filteredInChild(copy: Int32, by filter: SnapshotFilter, in directory: String) throws -> (fd: Int32, entries: Int) {
        try buildInChild(in: directory) { output in try write(copy: copy, by: filter, to: output) }
    }

    /// Runs `body` in a child process (see ``filteredInChild(copy:by:in:)``) with a new unnamed
    /// file in `directory`; the file and how many entries `body` says it wrote.
    static func buildInChild(in directory: String, _ body: (Int32) throws -> Int) throws -> (fd: Int32, entries: Int) {
        let output = FileCalls.openUnnamed(in: directory, mode: 0o644)
        guard output >= 0 else { throw RuntimeError.failed("cannot make a file in \(directory): \(Errno.last)") }
        var built = false
        defer { if !built { close(output) } }
        let ends: Pipe
        do { ends = try Pipe() } catch { throw RuntimeError.failed("cannot build the filtered snapshot: \(error.errno)") }
        let readEnd = ends.readEnd
        let writeEnd = ends.writeEnd
        fflush(nil)
        let child: Int32
        do { child = try Children.fork() } catch {
            throw RuntimeError.failed("cannot start the process that builds the filtered snapshot: \(error.errno)")
        }
        if child == 0 {
            readEnd.close()
            var status: Int32 = 0
            let reply: String
            do { reply = "\(try body(output))" } catch {
                reply = "\(error)"
                status = 1
            }
            try? IO.writeAll(writeEnd.rawValue, Array(reply.utf8))
            _exit(status)
        }
        writeEnd.close()
        let reply = String(decoding: (try? IO.readAll(readEnd.rawValue)) ?? [], as: UTF8.self)
        let status = Children.wait(child)
        guard status == .exited(0), let entries = Int(reply) else {
            throw RuntimeError.failed(reply.isEmpty ? "the process building the filtered snapshot ended without a word (\(String(describing: status)))" : reply)
        }
        built = true
        return (output, entries)
    }
}
