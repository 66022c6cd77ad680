/// Header fields and pax records.
extension TarReader {
    /// A 512-byte block whose checksum is right (and that is not all zeros).
    static func isHeader(_ block: ArraySlice<UInt8>) -> Bool {
        guard block.count == 512, block.contains(where: { $0 != 0 }) else { return false }
        let start = block.startIndex
        guard let stored = octal(block[(start + 148)..<(start + 156)]) else { return false }
        var unsigned: UInt64 = 0
        for (index, byte) in block.enumerated() { unsigned += (148..<156).contains(index) ? 32 : UInt64(byte) }
        return stored == unsigned
    }

    /// A numeric field: octal text (spaces and NULs around it), or GNU base-256 (big-endian
    /// two's complement after the marker bit; 0x40 set: negative). nil when it is neither or
    /// does not fit 64 bits.
    static func number(_ field: ArraySlice<UInt8>) -> Int64? {
        guard let first = field.first else { return nil }
        if first & 0x80 != 0 {
            var value = Int64(first & 0x7F) - (first & 0x40 != 0 ? 0x80 : 0)
            for byte in field.dropFirst() {
                // value * 256 + byte must stay within Int64.
                guard value >= Int64.min >> 8, value <= Int64.max >> 8 else { return nil }
                value = value << 8 | Int64(byte)
            }
            return value
        }
        return octal(field).flatMap(Int64.init(exactly:))
    }

    static func octal(_ field: ArraySlice<UInt8>) -> UInt64? {
        var value: UInt64 = 0
        var seen = false
        for byte in field {
            if byte == 0 || byte == 32 {
                if seen { break } else { continue }
            }
            guard (48...55).contains(byte), value >> 61 == 0 else { return nil }
            value = value << 3 | UInt64(byte - 48)
            seen = true
        }
        return value
    }

    static func trimNul(_ bytes: [UInt8]) -> [UInt8] {
        guard let end = bytes.firstIndex(of: 0) else { return bytes }
        return Array(bytes[..<end])
    }

    /// A pax time: decimal seconds (negative before 1970) with an optional fraction.
    func time(_ text: String, _ key: String) throws -> TarTime {
        var whole = Substring(text)
        var fraction = Substring("")
        if let dot = text.firstIndex(of: ".") {
            whole = text[..<dot]
            fraction = text[text.index(after: dot)...]
        }
        guard var seconds = Int64(whole), fraction.allSatisfy(\.isASCII), fraction.allSatisfy(\.isNumber) else {
            throw fail(.badPaxTime(key: key, value: text))
        }
        let digits = String((fraction + "000000000").prefix(9))
        var nanoseconds = UInt32(digits) ?? 0
        if whole.hasPrefix("-") && nanoseconds > 0 {
            guard seconds > Int64.min else { throw fail(.badPaxTime(key: key, value: text)) }
            seconds -= 1
            nanoseconds = 1_000_000_000 - nanoseconds
        }
        return TarTime(seconds: seconds, nanoseconds: nanoseconds)
    }

    /// pax records: "<length> <key>=<value>\n", one after another.
    func parsePax(_ data: [UInt8]) throws -> [(String, [UInt8])] {
        var records: [(String, [UInt8])] = []
        var start = 0
        while start < data.count {
            guard let space = data[start...].firstIndex(of: UInt8(ascii: " ")),
                  let length = Int(String(decoding: data[start..<space], as: UTF8.self)),
                  length > space - start, length <= data.count - start,
                  data[start + length - 1] == UInt8(ascii: "\n"),
                  let equals = data[(space + 1)..<(start + length)].firstIndex(of: UInt8(ascii: "="))
            else {
                if data[start...].allSatisfy({ $0 == 0 }) { break }
                throw fail(.malformedPax)
            }
            let key = String(decoding: data[(space + 1)..<equals], as: UTF8.self)
            records.append((key, Array(data[(equals + 1)..<(start + length - 1)])))
            start += length
        }
        return records
    }
}
