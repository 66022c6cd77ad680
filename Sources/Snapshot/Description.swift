import Ext3

/// What a snapshot holds, written as `snapshot.json` at the image's root (beside upper/ and
/// work/, outside what a container sees) and read back by `overlay snapshot info`.
public struct SnapshotDescription: Equatable, Sendable {
    /// One captured thing: a directory (at its absolute path under upper/) or an image.
    public struct Captured: Equatable, Sendable {
        public var path: String
        /// `directory`, `image` or `git`.
        public var kind: String
        public init(path: String, kind: String) {
            self.path = path
            self.kind = kind
        }
    }

    public struct GitRecord: Equatable, Sendable {
        public var repository: String
        public var commit: String
        public var branch: String
        public var pushed: Bool
        public init(repository: String, commit: String, branch: String, pushed: Bool) {
            self.repository = repository
            self.commit = commit
            self.branch = branch
            self.pushed = pushed
        }
    }

    /// A snapshot of a running job (`run-overlay --snapshot-to`): which job, what took it,
    /// and how long the job was frozen for it.
    public struct JobRecord: Equatable, Sendable {
        /// The run's id (`overlay jobs`).
        public var id: String
        /// `interval`, `demand` (SIGUSR1, `overlay snapshot now`) or `interruption` (SIGTERM).
        public var trigger: String
        /// How long the job's processes were stopped, in milliseconds (monotonic clock).
        public var pauseMilliseconds: Double
        public init(id: String, trigger: String, pauseMilliseconds: Double) {
            self.id = id
            self.trigger = trigger
            self.pauseMilliseconds = pauseMilliseconds
        }
    }

    public var name: String
    /// UTC, `2026-12-02T16:45:00Z`.
    public var created: String
    public var host: String
    public var user: String
    public var captured: [Captured]
    public var git: GitRecord?
    public var job: JobRecord?
    /// The image file's size in bytes.
    public var sizeBytes: UInt64
    /// Files and directories captured.
    public var entries: UInt64
    /// Bytes of file data captured.
    public var dataBytes: UInt64

    public static let fileName = "snapshot.json"

    public init(name: String, created: String, host: String, user: String, captured: [Captured], git: GitRecord?,
                sizeBytes: UInt64, entries: UInt64, dataBytes: UInt64) {
        self.name = name
        self.created = created
        self.host = host
        self.user = user
        self.captured = captured
        self.git = git
        self.sizeBytes = sizeBytes
        self.entries = entries
        self.dataBytes = dataBytes
    }

    /// One JSON object on one line.
    public var json: String {
        let q = Ext3.jsonQuoted
        var fields = ["\"name\":\(q(name))", "\"created\":\(q(created))", "\"host\":\(q(host))", "\"user\":\(q(user))"]
        fields.append("\"captured\":[" + captured.map { "{\"path\":\(q($0.path)),\"kind\":\(q($0.kind))}" }.joined(separator: ",") + "]")
        if let git {
            fields.append("\"git\":{\"repository\":\(q(git.repository)),\"commit\":\(q(git.commit)),\"branch\":\(q(git.branch)),\"pushed\":\(git.pushed)}")
        }
        if let job {
            let pause = (job.pauseMilliseconds * 1000).rounded() / 1000
            fields.append("\"job\":{\"id\":\(q(job.id)),\"trigger\":\(q(job.trigger)),\"pauseMilliseconds\":\(pause)}")
        }
        fields.append("\"sizeBytes\":\(sizeBytes)")
        fields.append("\"entries\":\(entries)")
        fields.append("\"dataBytes\":\(dataBytes)")
        return "{" + fields.joined(separator: ",") + "}"
    }

    /// Reads the description back; text from an image is not trusted: anything malformed is
    /// an error, and sizes are bounded by the caller (the file is read up to 1 MiB).
    public init(json text: String) throws {
        guard case let .object(object) = try JSONValue.parse(text) else { throw SnapshotError("not a JSON object") }
        func string(_ key: String, in object: [String: JSONValue]) throws -> String {
            guard case let .string(value)? = object[key] else { throw SnapshotError("no '\(key)'") }
            return value
        }
        func number(_ key: String) -> UInt64 {
            if case let .number(value)? = object[key], value >= 0, value < 1.8e19 { return UInt64(value) }
            return 0
        }
        name = try string("name", in: object)
        created = try string("created", in: object)
        host = (try? string("host", in: object)) ?? ""
        user = (try? string("user", in: object)) ?? ""
        captured = []
        if case let .array(items)? = object["captured"] {
            for case let .object(item) in items {
                captured.append(Captured(path: try string("path", in: item), kind: try string("kind", in: item)))
            }
        }
        if case let .object(record)? = object["git"] {
            var pushed = false
            if case let .bool(value)? = record["pushed"] { pushed = value }
            git = GitRecord(repository: try string("repository", in: record), commit: try string("commit", in: record),
                            branch: try string("branch", in: record), pushed: pushed)
        }
        if case let .object(record)? = object["job"] {
            var pause = 0.0
            if case let .number(value)? = record["pauseMilliseconds"], value >= 0, value < 1e12 { pause = value }
            job = JobRecord(id: try string("id", in: record), trigger: try string("trigger", in: record), pauseMilliseconds: pause)
        }
        sizeBytes = number("sizeBytes")
        entries = number("entries")
        dataBytes = number("dataBytes")
    }
}

/// Just enough JSON to read a snapshot's description back.
public enum JSONValue: Equatable, Sendable {
    case string(String), number(Double), bool(Bool), null, array([JSONValue]), object([String: JSONValue])

    public static func parse(_ text: String) throws -> JSONValue {
        var parser = Parser(bytes: Array(text.utf8))
        let value = try parser.value(depth: 0)
        parser.skipSpace()
        guard parser.position == parser.bytes.count else { throw SnapshotError("trailing text after the JSON value") }
        return value
    }

    struct Parser {
        let bytes: [UInt8]
        var position = 0

        mutating func skipSpace() {
            while position < bytes.count, [0x20, 0x0A, 0x0D, 0x09].contains(bytes[position]) { position += 1 }
        }

        mutating func value(depth: Int) throws -> JSONValue {
            guard depth < 16 else { throw SnapshotError("JSON nested too deeply") }
            skipSpace()
            guard position < bytes.count else { throw SnapshotError("JSON ends early") }
            switch bytes[position] {
            case UInt8(ascii: "{"):
                position += 1
                var object: [String: JSONValue] = [:]
                skipSpace()
                if position < bytes.count, bytes[position] == UInt8(ascii: "}") { position += 1; return .object(object) }
                while true {
                    skipSpace()
                    guard case let .string(key) = try value(depth: depth + 1) else { throw SnapshotError("JSON key is not a string") }
                    skipSpace()
                    try expect(UInt8(ascii: ":"))
                    object[key] = try value(depth: depth + 1)
                    skipSpace()
                    let separator = try next()
                    if separator == UInt8(ascii: "}") { return .object(object) }
                    guard separator == UInt8(ascii: ",") else { throw SnapshotError("malformed JSON object") }
                }
            case UInt8(ascii: "["):
                position += 1
                var array: [JSONValue] = []
                skipSpace()
                if position < bytes.count, bytes[position] == UInt8(ascii: "]") { position += 1; return .array(array) }
                while true {
                    array.append(try value(depth: depth + 1))
                    skipSpace()
                    let separator = try next()
                    if separator == UInt8(ascii: "]") { return .array(array) }
                    guard separator == UInt8(ascii: ",") else { throw SnapshotError("malformed JSON array") }
                }
            case UInt8(ascii: "\""):
                position += 1
                var out: [UInt8] = []
                while true {
                    let byte = try next()
                    if byte == UInt8(ascii: "\"") { break }
                    if byte != UInt8(ascii: "\\") { out.append(byte); continue }
                    let escape = try next()
                    switch escape {
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "u"):
                        guard position + 4 <= bytes.count,
                              let code = UInt32(String(decoding: bytes[position..<position + 4], as: UTF8.self), radix: 16) else {
                            throw SnapshotError("bad \\u escape in JSON")
                        }
                        position += 4
                        out += Array(String(Unicode.Scalar(code).map(Character.init) ?? "\u{FFFD}").utf8)
                    default: out.append(escape)
                    }
                }
                return .string(String(decoding: out, as: UTF8.self))
            case UInt8(ascii: "t"): try word("true"); return .bool(true)
            case UInt8(ascii: "f"): try word("false"); return .bool(false)
            case UInt8(ascii: "n"): try word("null"); return .null
            default:
                let start = position
                while position < bytes.count, "-+.eE0123456789".utf8.contains(bytes[position]) { position += 1 }
                guard let number = Double(String(decoding: bytes[start..<position], as: UTF8.self)) else {
                    throw SnapshotError("unexpected text in JSON")
                }
                return .number(number)
            }
        }

        mutating func next() throws -> UInt8 {
            guard position < bytes.count else { throw SnapshotError("JSON ends early") }
            defer { position += 1 }
            return bytes[position]
        }

        mutating func expect(_ byte: UInt8) throws {
            guard try next() == byte else { throw SnapshotError("malformed JSON") }
        }

        mutating func word(_ text: String) throws {
            for byte in text.utf8 { try expect(byte) }
        }
    }
}
