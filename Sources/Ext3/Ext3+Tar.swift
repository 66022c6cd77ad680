import CZlib
#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// What a source path holds, judged by its content (not its name).
    public enum SourceKind: String, Sendable {
        case directory, tar, gzipTar

        /// Looks at `path`: a directory, a tar archive (ustar, GNU or pax; or old-style with a
        /// valid header checksum), or gzip (assumed to hold a tar archive, checked when read).
        public static func detect(_ path: String) throws -> SourceKind {
            var info = stat()
            guard stat(path, &info) == 0 else {
                let code = errno
                if code == ENOENT { throw Error.invalidConfiguration("\(path) does not exist: give a directory or a tar archive to pack") }
                throw Error.system(operation: "read", path: path, errno: code)
            }
            if info.st_mode & S_IFMT == S_IFDIR { return .directory }
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw Error.system(operation: "open", path: path, errno: errno) }
            defer { close(fd) }
            var header = [UInt8](repeating: 0, count: 512)
            let count = header.withUnsafeMutableBytes { read(fd, $0.baseAddress, 512) }
            guard count >= 0 else { throw Error.system(operation: "read", path: path, errno: errno) }
            if count >= 2 && header[0] == 0x1F && header[1] == 0x8B { return .gzipTar }
            if count == 512 && TarReader.isHeader(header) { return .tar }
            let compressed: [([UInt8], String)] = [
                ([0x42, 0x5A, 0x68], "bzip2 (bunzip2 it first)"),
                ([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00], "xz (unxz it first)"),
                ([0x28, 0xB5, 0x2F, 0xFD], "zstd (unzstd it first)"),
            ]
            for (magic, what) in compressed where count >= magic.count && Array(header[..<magic.count]) == magic {
                throw Error.invalidConfiguration("\(path) is compressed with \(what): only plain and gzip-compressed tar archives are read")
            }
            throw Error.invalidConfiguration("\(path) is neither a directory nor a tar archive (plain or gzip): give one of those")
        }
    }

    /// A sequential source of bytes: a file, or a gzip stream over one.
    protocol ByteStream: AnyObject {
        /// Reads up to `count` bytes; 0 at the end.
        func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int
    }

    final class FileStream: ByteStream {
        let fd: Int32
        let path: String
        init(path: String) throws {
            self.path = path
            fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw Error.system(operation: "open", path: path, errno: errno) }
        }
        deinit { close(fd) }
        func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int {
            while true {
                let got = Glibc.read(fd, buffer, count)
                if got >= 0 { return got }
                if errno == EINTR { continue }
                throw Error.system(operation: "read", path: path, errno: errno)
            }
        }
    }

    /// gzip (one or more members) over a file, through zlib.
    final class GzipStream: ByteStream {
        let file: FileStream
        var stream = z_stream()
        let input: UnsafeMutablePointer<UInt8>
        static let inputSize = 1 << 20
        var finished = false

        init(path: String) throws {
            file = try FileStream(path: path)
            input = .allocate(capacity: GzipStream.inputSize)
            guard czlib_inflate_init_gzip(&stream) == Z_OK else {
                input.deallocate()
                throw Error.other("\(path): cannot start gzip decompression")
            }
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
                    let got = try file.read(into: input, count: GzipStream.inputSize)
                    if got == 0 {
                        guard atMemberEnd else {
                            throw Error.invalidConfiguration("\(file.path): the gzip data ends early (truncated file?)")
                        }
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
                    throw Error.invalidConfiguration("\(file.path): the gzip data is damaged (zlib status \(status))")
                }
                atMemberEnd = false
            }
            return Int(wanted - stream.avail_out)
        }
        private var atMemberEnd = false
    }

    /// One tar archive entry's header, with GNU long names and pax records applied.
    struct TarEntry {
        var ordinal: Int
        var path: [UInt8]
        var linkPath: [UInt8]
        var type: UInt8
        var mode: UInt16
        var uid: UInt32
        var gid: UInt32
        var size: UInt64
        var mtime: Timestamp
        var atime: Timestamp?
        var ctime: Timestamp?
        var major: UInt32
        var minor: UInt32
        var xattrs: [(name: String, value: [UInt8])]
    }

    /// Reads ustar, GNU (long names and links) and pax (path, linkpath, times with fractions,
    /// uid, gid, size, SCHILY.xattr.*) tar archives sequentially.
    final class TarReader {
        let stream: ByteStream
        let path: String
        private var pendingData: UInt64 = 0  // data and padding of the current entry not yet read
        private var ordinal = 0
        private var position: UInt64 = 0
        private var global: [String: [UInt8]] = [:]
        private var scratch = [UInt8](repeating: 0, count: 1 << 16)

        init(stream: ByteStream, path: String) {
            self.stream = stream
            self.path = path
        }

        static func open(_ path: String, kind: SourceKind) throws -> TarReader {
            let stream: ByteStream = kind == .gzipTar ? try GzipStream(path: path) : try FileStream(path: path)
            return TarReader(stream: stream, path: path)
        }

        /// A 512-byte block whose checksum is right.
        static func isHeader(_ block: [UInt8]) -> Bool {
            guard block.count == 512, block.contains(where: { $0 != 0 }) else { return false }
            guard let stored = octal(block[148..<156]) else { return false }
            var unsigned: UInt64 = 0
            for (index, byte) in block.enumerated() { unsigned += (148..<156).contains(index) ? 32 : UInt64(byte) }
            return stored == unsigned
        }

        private func fail(_ why: String) -> Error {
            Error.invalidConfiguration("\(path): \(why) (at byte \(position)); the archive is damaged or not a tar archive")
        }

        /// Reads exactly `count` bytes into `buffer`; false at a clean end before the first byte.
        private func readExactly(_ buffer: UnsafeMutableRawPointer, _ count: Int) throws -> Bool {
            var done = 0
            while done < count {
                let got = try stream.read(into: buffer + done, count: count - done)
                if got == 0 {
                    if done == 0 { return false }
                    throw fail("the archive ends in the middle of an entry")
                }
                done += got
            }
            position += UInt64(count)
            return true
        }

        private func readBlock() throws -> [UInt8]? {
            var block = [UInt8](repeating: 0, count: 512)
            let atStart = position == 0
            do {
                let ok = try block.withUnsafeMutableBytes { try readExactly($0.baseAddress!, 512) }
                if atStart && ok && !TarReader.isHeader(block) { throw notTar() }
                return ok ? block : nil
            } catch Error.invalidConfiguration where atStart {
                throw notTar()
            }
        }

        private func notTar() -> Error {
            Error.invalidConfiguration("\(path) does not hold a tar archive: give a directory or a tar archive (plain or gzip)")
        }

        /// Skips whatever is left of the current entry's data.
        func skipData() throws {
            while pendingData > 0 {
                let count = Int(min(pendingData, UInt64(scratch.count)))
                let ok = try scratch.withUnsafeMutableBytes { try readExactly($0.baseAddress!, count) }
                guard ok else { throw fail("the archive ends in the middle of an entry") }
                pendingData -= UInt64(count)
            }
        }

        private func readPayload(_ size: UInt64) throws -> [UInt8] {
            guard size < 64 << 20 else { throw fail("an extended header of \(size) bytes") }
            let padded = Int((size + 511) & ~511)
            var bytes = [UInt8](repeating: 0, count: padded)
            if padded > 0 {
                let ok = try bytes.withUnsafeMutableBytes { try readExactly($0.baseAddress!, padded) }
                guard ok else { throw fail("the archive ends in the middle of an entry") }
            }
            return Array(bytes[..<Int(size)])
        }

        /// Reads the current entry's data in chunks of at most `buffer.count` bytes, calling
        /// `body` with each chunk and its offset in the file. Then skips the padding.
        func readData(size: UInt64, buffer: UnsafeMutableRawBufferPointer,
                      _ body: (UnsafeRawBufferPointer, UInt64) throws -> Void) throws {
            var offset: UInt64 = 0
            while offset < size {
                let count = Int(min(size - offset, UInt64(buffer.count)))
                guard try readExactly(buffer.baseAddress!, count) else { throw fail("the archive ends in the middle of an entry") }
                try body(UnsafeRawBufferPointer(rebasing: buffer[..<count]), offset)
                offset += UInt64(count)
                pendingData -= UInt64(count)
            }
            try skipData()
        }

        /// The next entry (its data not yet read), or nil at the end of the archive.
        func next() throws -> TarEntry? {
            try skipData()
            var longName: [UInt8]? = nil
            var longLink: [UInt8]? = nil
            var pax: [String: [UInt8]] = [:]
            while true {
                guard let block = try readBlock() else {
                    if ordinal == 0 && position == 0 { throw fail("the archive is empty") }
                    return nil  // no end-of-archive blocks: accept, as GNU tar does
                }
                if !block.contains(where: { $0 != 0 }) { return nil }
                guard TarReader.isHeader(block) else { throw fail("a header's checksum is wrong") }
                let type = block[156]
                guard let size = TarReader.number(block[124..<136]) else { throw fail("a header has a bad size field") }
                switch type {
                case UInt8(ascii: "L"):
                    longName = trimNul(try readPayload(size))
                    continue
                case UInt8(ascii: "K"):
                    longLink = trimNul(try readPayload(size))
                    continue
                case UInt8(ascii: "x"):
                    for (key, value) in try parsePax(try readPayload(size)) { pax[key] = value }
                    continue
                case UInt8(ascii: "g"):
                    for (key, value) in try parsePax(try readPayload(size)) { global[key] = value }
                    continue
                case UInt8(ascii: "S"):
                    throw fail("GNU sparse entries are not supported: make the archive without --sparse")
                case UInt8(ascii: "V"):
                    pendingData = (size + 511) & ~511
                    try skipData()
                    continue
                default:
                    break
                }
                let records = global.merging(pax) { $1 }
                if records.keys.contains(where: { $0.hasPrefix("GNU.sparse.") }) {
                    throw fail("pax sparse entries are not supported: make the archive without --sparse")
                }
                let isUstar = block[257..<263].elementsEqual("ustar\0".utf8)
                var name = trimNul(Array(block[0..<100]))
                if isUstar {
                    let prefix = trimNul(Array(block[345..<500]))
                    if !prefix.isEmpty { name = prefix + [UInt8(ascii: "/")] + name }
                }
                var entry = TarEntry(
                    ordinal: ordinal, path: longName ?? name, linkPath: longLink ?? trimNul(Array(block[157..<257])),
                    type: type == 0 ? UInt8(ascii: "0") : type,
                    mode: UInt16(truncatingIfNeeded: (TarReader.number(block[100..<108]) ?? 0) & 0o7777),
                    uid: UInt32(truncatingIfNeeded: TarReader.number(block[108..<116]) ?? 0),
                    gid: UInt32(truncatingIfNeeded: TarReader.number(block[116..<124]) ?? 0),
                    size: size,
                    mtime: Timestamp(seconds: Int64(bitPattern: TarReader.number(block[136..<148]) ?? 0)),
                    atime: nil, ctime: nil,
                    major: UInt32(truncatingIfNeeded: TarReader.number(block[329..<337]) ?? 0),
                    minor: UInt32(truncatingIfNeeded: TarReader.number(block[337..<345]) ?? 0),
                    xattrs: [])
                for (key, value) in records {
                    let text = String(decoding: value, as: UTF8.self)
                    switch key {
                    case "path": entry.path = value
                    case "linkpath": entry.linkPath = value
                    case "size": entry.size = UInt64(text) ?? entry.size
                    case "uid": entry.uid = UInt32(text) ?? entry.uid
                    case "gid": entry.gid = UInt32(text) ?? entry.gid
                    case "mtime": entry.mtime = try time(text, key)
                    case "atime": entry.atime = try time(text, key)
                    case "ctime": entry.ctime = try time(text, key)
                    case "SCHILY.devmajor": entry.major = UInt32(text) ?? entry.major
                    case "SCHILY.devminor": entry.minor = UInt32(text) ?? entry.minor
                    default:
                        if key.hasPrefix("SCHILY.xattr.") {
                            entry.xattrs.append((String(key.dropFirst("SCHILY.xattr.".count)), value))
                        }
                    }
                }
                entry.xattrs.sort { $0.name < $1.name }
                ordinal += 1
                // Only regular files carry data (a hard link's size is that of its target).
                let carries = [UInt8(ascii: "0"), UInt8(ascii: "7")].contains(entry.type)
                pendingData = carries ? (entry.size + 511) & ~511 : (size + 511) & ~511
                if !carries { entry.size = 0 }
                return entry
            }
        }

        private func time(_ text: String, _ key: String) throws -> Timestamp {
            var whole = Substring(text)
            var fraction = Substring("")
            if let dot = text.firstIndex(of: ".") {
                whole = text[..<dot]
                fraction = text[text.index(after: dot)...]
            }
            guard var seconds = Int64(whole), fraction.allSatisfy(\.isASCII), fraction.allSatisfy(\.isNumber) else {
                throw fail("pax \(key) '\(text)' is not a time")
            }
            let digits = String((fraction + "000000000").prefix(9))
            var nanoseconds = UInt32(digits) ?? 0
            if whole.hasPrefix("-") && nanoseconds > 0 {
                seconds -= 1
                nanoseconds = 1_000_000_000 - nanoseconds
            }
            return Timestamp(seconds: seconds, nanoseconds: nanoseconds)
        }

        /// pax records: "<length> <key>=<value>\n".
        private func parsePax(_ data: [UInt8]) throws -> [(String, [UInt8])] {
            var records: [(String, [UInt8])] = []
            var start = 0
            while start < data.count {
                guard let space = data[start...].firstIndex(of: UInt8(ascii: " ")),
                      let length = Int(String(decoding: data[start..<space], as: UTF8.self)),
                      length > space - start, start + length <= data.count,
                      data[start + length - 1] == UInt8(ascii: "\n"),
                      let equals = data[(space + 1)..<(start + length)].firstIndex(of: UInt8(ascii: "="))
                else {
                    if data[start...].allSatisfy({ $0 == 0 }) { break }
                    throw fail("a pax extended header is malformed")
                }
                let key = String(decoding: data[(space + 1)..<equals], as: UTF8.self)
                records.append((key, Array(data[(equals + 1)..<(start + length - 1)])))
                start += length
            }
            return records
        }

        private func trimNul(_ bytes: [UInt8]) -> [UInt8] {
            guard let end = bytes.firstIndex(of: 0) else { return bytes }
            return Array(bytes[..<end])
        }

        /// A numeric field: octal text (spaces and NULs around it), or GNU base-256.
        static func number(_ field: ArraySlice<UInt8>) -> UInt64? {
            guard let first = field.first else { return nil }
            if first & 0x80 != 0 {
                // Big-endian two's complement in the bits after the marker bit (0x40: negative).
                var value = Int64(first & 0x7F) - (first & 0x40 != 0 ? 0x80 : 0)
                for byte in field.dropFirst() { value = value << 8 | Int64(byte) }
                return UInt64(bitPattern: value)
            }
            return octal(field)
        }

        static func octal(_ field: ArraySlice<UInt8>) -> UInt64? {
            var value: UInt64 = 0
            var seen = false
            for byte in field {
                if byte == 0 || byte == 32 {
                    if seen { break } else { continue }
                }
                guard (48...55).contains(byte) else { return nil }
                value = value << 3 | UInt64(byte - 48)
                seen = true
            }
            return value
        }
    }
}

extension Ext3.Tree {
    /// Reads a tar archive's headers into a tree (data is read later, by the packer). Entries
    /// named more than once: the last one wins, as when extracting. Directories an entry needs
    /// but the archive does not list are made with mode 0755, owned by whoever runs this.
    public static func scan(archive path: String, kind: Ext3.SourceKind) throws -> Ext3.Tree {
        let reader = try Ext3.TarReader.open(path, kind: kind)
        let now = Ext3.Timestamp.now
        let implicit = Node(kind: .directory, permissions: 0o755, uid: getuid(), gid: getgid(), atime: now, mtime: now, ctime: now)
        var tree = Ext3.Tree(root: implicit)
        var lookup: [[UInt8]: Int] = [[]: 0]  // path (components joined by /) -> node
        var childIndex: [Int: [[UInt8]: Int]] = [0: [:]]  // directory -> name -> position in children

        func components(_ raw: [UInt8]) throws -> [[UInt8]] {
            let parts = raw.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true).map(Array.init)
                .filter { $0 != [UInt8(ascii: ".")] }
            if parts.contains([46, 46]) {
                throw Ext3.Error.invalidConfiguration("\(path): entry '\(display(raw))' leaves the tree with '..'; refusing the archive")
            }
            for part in parts { try checkName(part, in: display(raw)) }
            return parts
        }

        /// The directory node at `parts`, made when missing.
        func directory(_ parts: [[UInt8]]) throws -> Int {
            var current = 0
            var key: [UInt8] = []
            for part in parts {
                key += key.isEmpty ? part : [UInt8(ascii: "/")] + part
                if let found = lookup[key] {
                    guard tree.nodes[found].kind == .directory else {
                        throw Ext3.Error.invalidConfiguration("\(path): '\(display(key))' is not a directory, yet entries are inside it")
                    }
                    current = found
                    continue
                }
                let index = tree.nodes.count
                tree.nodes.append(implicit)
                childIndex[index] = [:]
                childIndex[current]![part] = tree.nodes[current].children.count
                tree.nodes[current].children.append((part, index))
                lookup[key] = index
                current = index
            }
            return current
        }

        while let entry = try reader.next() {
            let parts = try components(entry.path)
            let key = parts.joined(separator: [UInt8(ascii: "/")]).map { $0 }
            var node = Node(kind: .regular, permissions: entry.mode, uid: entry.uid, gid: entry.gid,
                            atime: entry.atime ?? entry.mtime, mtime: entry.mtime, ctime: entry.ctime ?? entry.mtime)
            node.xattrs = entry.xattrs
            switch entry.type {
            case UInt8(ascii: "0"), UInt8(ascii: "7"):
                node.size = entry.size
                node.content = .archive(ordinal: entry.ordinal)
            case UInt8(ascii: "5"), UInt8(ascii: "D"): node.kind = .directory
            case UInt8(ascii: "2"):
                node.kind = .symlink
                node.target = entry.linkPath
                node.size = UInt64(entry.linkPath.count)
                if entry.linkPath.count >= Ext3.blockSize {
                    throw Ext3.Error.invalidConfiguration("\(path): '\(display(entry.path))': symbolic link target longer than \(Ext3.blockSize - 1) bytes")
                }
            case UInt8(ascii: "3"), UInt8(ascii: "4"):
                node.kind = entry.type == UInt8(ascii: "3") ? .characterDevice : .blockDevice
                node.major = entry.major
                node.minor = entry.minor
            case UInt8(ascii: "6"): node.kind = .fifo
            case UInt8(ascii: "1"): break
            default:
                throw Ext3.Error.invalidConfiguration("\(path): entry '\(display(entry.path))' has a type ('\(Character(Unicode.Scalar(entry.type)))') this reader does not know")
            }
            if parts.isEmpty { continue }  // the archive's root: upper/ keeps its own metadata
            let parent = try directory(Array(parts.dropLast()))
            let name = parts.last!

            // What the entry points at: a new inode, or (hard link) an earlier one.
            var target: Int
            if entry.type == UInt8(ascii: "1") {
                let targetKey = try components(entry.linkPath).joined(separator: [UInt8(ascii: "/")]).map { $0 }
                guard let found = lookup[targetKey], tree.nodes[found].kind != .directory else {
                    throw Ext3.Error.invalidConfiguration(
                        "\(path): hard link '\(display(entry.path))' points to '\(display(entry.linkPath))', which is not an earlier file in the archive")
                }
                target = found
            } else {
                target = -1
            }

            if let existing = lookup[key] {
                if tree.nodes[existing].kind == .directory && node.kind == .directory {
                    let children = tree.nodes[existing].children
                    tree.nodes[existing] = node
                    tree.nodes[existing].children = children
                    continue
                }
                if tree.nodes[existing].kind == .directory {
                    throw Ext3.Error.invalidConfiguration("\(path): '\(display(entry.path))' appears as a directory and again as something else")
                }
                if existing == target { continue }
                // Replace: the old inode loses this name.
                tree.nodes[existing].links -= 1
                if target < 0 {
                    target = tree.nodes.count
                    tree.nodes.append(node)
                } else {
                    tree.nodes[target].links += 1
                }
                let position = childIndex[parent]![name]!
                tree.nodes[parent].children[position].node = target
                lookup[key] = target
                continue
            }
            if target < 0 {
                target = tree.nodes.count
                tree.nodes.append(node)
                if node.kind == .directory { childIndex[target] = [:] }
            } else {
                tree.nodes[target].links += 1
                if tree.nodes[target].links > linkLimit {
                    throw Ext3.Error.invalidConfiguration("\(path): '\(display(entry.linkPath))' has more than \(linkLimit) hard links, which ext3 cannot hold")
                }
            }
            childIndex[parent]![name] = tree.nodes[parent].children.count
            tree.nodes[parent].children.append((name, target))
            lookup[key] = target
        }
        tree.dropUnlinked()
        return tree
    }

    /// Removes inodes that lost every name (entries replaced later in an archive), renumbering
    /// the rest.
    mutating func dropUnlinked() {
        guard nodes.dropFirst().contains(where: { $0.links == 0 }) else { return }
        var newIndex = [Int](repeating: -1, count: nodes.count)
        var kept: [Node] = []
        for (index, node) in nodes.enumerated() where index == 0 || node.links > 0 {
            newIndex[index] = kept.count
            kept.append(node)
        }
        for index in kept.indices {
            kept[index].children = kept[index].children.map { ($0.name, newIndex[$0.node]) }
        }
        nodes = kept
    }
}
