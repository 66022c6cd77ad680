import Foundation

/// A numeric tar header field: octal text, or GNU base-256 (negative numbers, large ones), or
/// bytes as given (for damaged fields).
public enum TarNumber: Sendable {
    case octal(UInt64)
    case base256(Int64)
    /// Base-256 with every value bit set: a number no 64-bit field holds.
    case base256Overflowing
    case raw([UInt8])

    func field(width: Int) -> [UInt8] {
        switch self {
        case let .octal(value):
            let text = Array(String(value, radix: 8).utf8)
            return [UInt8](repeating: UInt8(ascii: "0"), count: max(0, width - 1 - text.count)) + text + [0]
        case let .base256(value):
            // Big-endian, sign-extended over the whole field, the marker bit set.
            var bytes = (0..<width).reversed().map { index in
                index < 8 ? UInt8(truncatingIfNeeded: value >> (8 * index)) : (value < 0 ? 0xFF : 0)
            }
            bytes[0] |= 0x80
            return bytes
        case .base256Overflowing:
            return [0xBF] + [UInt8](repeating: 0xFF, count: width - 1)
        case let .raw(bytes):
            return Array((bytes + [UInt8](repeating: 0, count: width)).prefix(width))
        }
    }
}

/// One tar header block, ustar by default, its checksum worked out when it is written.
public struct TarHeader: Sendable {
    public var name: [UInt8]
    public var type: UInt8
    public var mode: TarNumber = .octal(0o644)
    public var uid: TarNumber = .octal(1000)
    public var gid: TarNumber = .octal(1000)
    public var size: TarNumber = .octal(0)
    public var mtime: TarNumber = .octal(1_700_000_000)
    public var linkName: [UInt8] = []
    /// The ustar prefix field (the name's leading directories when it is long).
    public var prefix: [UInt8] = []
    public var major: TarNumber = .octal(0)
    public var minor: TarNumber = .octal(0)
    /// false: an old-style (v7) header, without the ustar magic.
    public var ustar = true
    /// Added to the right checksum (non-zero: a damaged header).
    public var checksumError = 0

    public init(_ name: String, type: Character = "0") {
        self.name = Array(name.utf8)
        self.type = type.asciiValue!
    }

    public var block: [UInt8] {
        var block = [UInt8](repeating: 0, count: 512)
        func put(_ bytes: [UInt8], at offset: Int, width: Int) {
            for (index, byte) in bytes.prefix(width).enumerated() { block[offset + index] = byte }
        }
        put(name, at: 0, width: 100)
        put(mode.field(width: 8), at: 100, width: 8)
        put(uid.field(width: 8), at: 108, width: 8)
        put(gid.field(width: 8), at: 116, width: 8)
        put(size.field(width: 12), at: 124, width: 12)
        put(mtime.field(width: 12), at: 136, width: 12)
        block[156] = type
        put(linkName, at: 157, width: 100)
        if ustar {
            put(Array("ustar\u{0}00".utf8), at: 257, width: 8)
            put(Array("user".utf8), at: 265, width: 32)
            put(Array("group".utf8), at: 297, width: 32)
            put(major.field(width: 8), at: 329, width: 8)
            put(minor.field(width: 8), at: 337, width: 8)
            put(prefix, at: 345, width: 155)
        }
        let sum = block.enumerated().reduce(0) { $0 + ((148..<156).contains($1.offset) ? 32 : Int($1.element)) } + checksumError
        put(TarNumber.octal(UInt64(sum)).field(width: 7) + [UInt8(ascii: " ")], at: 148, width: 8)
        return block
    }
}

/// A tar archive built in memory, entry by entry: for tests that need archives no tar program
/// makes (or makes only with options this machine's tar may lack).
public struct TarBuilder: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    /// A header and its data, padded to whole blocks.
    public mutating func append(_ header: TarHeader, data: [UInt8] = []) {
        bytes += header.block
        appendPadded(data)
    }

    /// Bytes as they are (damage, or a partial block).
    public mutating func appendRaw(_ raw: [UInt8]) {
        bytes += raw
    }

    public mutating func file(_ name: String, _ content: String, mode: UInt64 = 0o644) {
        var header = TarHeader(name)
        header.mode = .octal(mode)
        header.size = .octal(UInt64(content.utf8.count))
        append(header, data: Array(content.utf8))
    }

    public mutating func directory(_ name: String, mode: UInt64 = 0o755) {
        var header = TarHeader(name, type: "5")
        header.mode = .octal(mode)
        append(header)
    }

    public mutating func symlink(_ name: String, to target: String) {
        var header = TarHeader(name, type: "2")
        header.linkName = Array(target.utf8)
        append(header)
    }

    public mutating func hardLink(_ name: String, to target: String) {
        var header = TarHeader(name, type: "1")
        header.linkName = Array(target.utf8)
        append(header)
    }

    public mutating func fifo(_ name: String) {
        append(TarHeader(name, type: "6"))
    }

    /// A pax extended header (`x`, or `g` for a global one) with these records.
    public mutating func pax(_ records: [(key: String, value: [UInt8])], global: Bool = false) {
        let payload = records.flatMap { TarBuilder.paxRecord($0.key, $0.value) }
        var header = TarHeader("PaxHeaders/entry", type: global ? "g" : "x")
        header.size = .octal(UInt64(payload.count))
        append(header, data: payload)
    }

    public mutating func pax(_ records: [(key: String, value: String)], global: Bool = false) {
        pax(records.map { ($0.key, Array($0.value.utf8)) }, global: global)
    }

    /// A GNU long name (`L`) or long link (`K`) for the entry that follows.
    public mutating func gnuLong(_ type: Character, _ text: String) {
        let payload = Array(text.utf8) + [0]
        var header = TarHeader("././@LongLink", type: type)
        header.size = .octal(UInt64(payload.count))
        append(header, data: payload)
    }

    /// The two zero blocks that end an archive.
    public mutating func end() {
        bytes += [UInt8](repeating: 0, count: 1024)
    }

    /// `"<length> <key>=<value>\n"`, the length counting itself.
    public static func paxRecord(_ key: String, _ value: [UInt8]) -> [UInt8] {
        let rest = 1 + key.utf8.count + 1 + value.count + 1
        var length = rest + 1
        while rest + String(length).count != length { length = rest + String(length).count }
        return Array("\(length) \(key)=".utf8) + value + [UInt8(ascii: "\n")]
    }

    private mutating func appendPadded(_ data: [UInt8]) {
        bytes += data
        let padding = (512 - data.count % 512) % 512
        bytes += [UInt8](repeating: 0, count: padding)
    }

    /// `bytes` compressed by the gzip program (one member).
    public static func gzip(_ bytes: [UInt8]) throws -> [UInt8] {
        let directory = try TempDirectory("gzip")
        let path = directory.file("data")
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let result = try run(["gzip", "-n", path], timeout: 60)
        guard result.status == 0 else { throw CocoaError(.fileWriteUnknown) }
        return Array(try Data(contentsOf: URL(fileURLWithPath: path + ".gz")))
    }
}
