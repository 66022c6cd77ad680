import CZlib

/// gzip (one member or several, one after another) over another stream, through zlib.
final class GzipStream: ByteStream {
    private let source: ByteStream
    private let path: String
    private var stream = z_stream()
    private let input: UnsafeMutablePointer<UInt8>
    private static let inputSize = 1 << 20
    private var finished = false
    private var atMemberEnd = false

    /// gzip data read from `source`; `path` names it in errors.
    init(_ source: ByteStream, path: String) throws {
        self.source = source
        self.path = path
        input = .allocate(capacity: GzipStream.inputSize)
        guard czlib_inflate_init_gzip(&stream) == Z_OK else {
            input.deallocate()
            throw ArchiveError.gzip(path: path, .cannotStart)
        }
    }

    /// The gzip file at `path`.
    convenience init(path: String) throws {
        try self.init(FileStream(path: path), path: path)
    }

    deinit {
        inflateEnd(&stream)
        input.deallocate()
    }

    func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int {
        if finished || count == 0 { return 0 }
        let wanted = UInt32(min(count, Int(UInt32.max)))
        stream.next_out = buffer.assumingMemoryBound(to: UInt8.self)
        stream.avail_out = wanted
        while stream.avail_out > 0 {
            if stream.avail_in == 0 {
                let got = try source.read(into: input, count: GzipStream.inputSize)
                if got == 0 {
                    guard atMemberEnd else { throw ArchiveError.gzip(path: path, .truncated) }
                    finished = true
                    break
                }
                stream.next_in = input
                stream.avail_in = UInt32(got)
            }
            let status = inflate(&stream, Z_NO_FLUSH)
            if status == Z_STREAM_END {
                atMemberEnd = true
                inflateReset(&stream)  // another member may follow
                continue
            }
            guard status == Z_OK || (status == Z_BUF_ERROR && stream.avail_in == 0) else {
                throw ArchiveError.gzip(path: path, .damaged(status: status))
            }
            atMemberEnd = false
        }
        return Int(wanted - stream.avail_out)
    }
}
