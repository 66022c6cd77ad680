import LinuxSupport
/// What a checkpoint directory says about itself, in `manifest.json` beside the CRIU images
/// (`images/`). Written last, so a directory without it holds no complete checkpoint.
public struct CheckpointManifest: Sendable, Equatable {
    public static let fileName = "manifest.json"

    /// Version of this layout.
    public var format = 1
    public var criuVersion: String
    /// When the dump was taken, UTC, `YYYY-mm-ddTHH:MM:SSZ`.
    public var created: String
    /// The dumped tree's root, as this machine's (outermost) PID namespace saw it.
    public var rootPID: Int32
    /// Every process of the tree when it was dumped, the root first (outermost pids).
    public var pids: [Int32]
    /// The root's command line, from /proc/PID/cmdline.
    public var command: [String]
    /// What the dump belongs to (a job, a snapshot), as the caller said; may be empty.
    public var belongsTo: String
    /// Whether the tree was left running after the dump (else it was killed).
    public var leftRunning: Bool
    /// The root was the first process of its own PID namespace (a native-runtime job).
    public var pidNamespace: Bool
    /// The dump ran inside the root's mount namespace: restore it into the same mounts.
    public var mountNamespace: Bool
    /// Milliseconds the tree was stopped for the dump.
    public var pauseMilliseconds: Int
    /// The root's standard input, output and error as CRIU names them (`pipe:[INODE]`,
    /// `tty[RDEV:DEV]`, `socket:[INODE]`, or a file's path as CRIU recorded it, without the leading slash); a restore hands
    /// the caller's descriptors in their place.
    public var streams: [Stream]

    public struct Stream: Sendable, Equatable {
        public var fd: Int32
        public var resource: String
        /// CRIU's `--external` argument the dump needed for it, or "".
        public var external: String
    }

    /// One JSON object, keys in a fixed order, with a final newline.
    public var json: String {
        let fields: [(String, String)] = [
            ("format", "\(format)"),
            ("criuVersion", JSON.quoted(criuVersion)),
            ("created", JSON.quoted(created)),
            ("rootPid", "\(rootPID)"),
            ("pids", "[" + pids.map { "\($0)" }.joined(separator: ",") + "]"),
            ("command", "[" + command.map(JSON.quoted).joined(separator: ",") + "]"),
            ("belongsTo", JSON.quoted(belongsTo)),
            ("leftRunning", "\(leftRunning)"),
            ("pidNamespace", "\(pidNamespace)"),
            ("mountNamespace", "\(mountNamespace)"),
            ("pauseMilliseconds", "\(pauseMilliseconds)"),
            ("streams", "[" + streams.map {
                "{\"fd\":\($0.fd),\"resource\":\(JSON.quoted($0.resource)),\"external\":\(JSON.quoted($0.external))}"
            }.joined(separator: ",") + "]"),
        ]
        return "{" + fields.map { "\(JSON.quoted($0.0)):\($0.1)" }.joined(separator: ",") + "}\n"
    }

    /// Parses what ``json`` wrote; nil when the text is not such a manifest.
    public init?(json text: String) {
        guard case let .object(o)? = JSON.parse(text),
              case let .number(format)? = o["format"], format == 1,
              case let .string(criuVersion)? = o["criuVersion"],
              case let .string(created)? = o["created"],
              case let .number(rootPID)? = o["rootPid"],
              case let .array(pidList)? = o["pids"],
              case let .array(command)? = o["command"],
              case let .string(belongsTo)? = o["belongsTo"],
              case let .bool(leftRunning)? = o["leftRunning"],
              case let .bool(pidNamespace)? = o["pidNamespace"],
              case let .bool(mountNamespace)? = o["mountNamespace"],
              case let .number(pause)? = o["pauseMilliseconds"],
              case let .array(streams)? = o["streams"]
        else { return nil }
        var parsedStreams: [Stream] = []
        for entry in streams {
            guard case let .object(s) = entry, case let .number(fd)? = s["fd"], case let .string(resource)? = s["resource"],
                  case let .string(external)? = s["external"], (0...2).contains(fd) else { return nil }
            parsedStreams.append(Stream(fd: Int32(fd), resource: resource, external: external))
        }
        var pids: [Int32] = []
        for entry in pidList {
            guard case let .number(pid) = entry, pid > 0, pid <= Int(Int32.max) else { return nil }
            pids.append(Int32(pid))
        }
        var words: [String] = []
        for word in command {
            guard case let .string(w) = word else { return nil }
            words.append(w)
        }
        self.init(criuVersion: criuVersion, created: created, rootPID: Int32(truncatingIfNeeded: rootPID), pids: pids, command: words,
                  belongsTo: belongsTo, leftRunning: leftRunning, pidNamespace: pidNamespace,
                  mountNamespace: mountNamespace, pauseMilliseconds: pause, streams: parsedStreams)
    }

    public init(criuVersion: String, created: String, rootPID: Int32, pids: [Int32], command: [String], belongsTo: String,
                leftRunning: Bool, pidNamespace: Bool, mountNamespace: Bool, pauseMilliseconds: Int, streams: [Stream]) {
        self.criuVersion = criuVersion
        self.created = created
        self.rootPID = rootPID
        self.pids = pids
        self.command = command
        self.belongsTo = belongsTo
        self.leftRunning = leftRunning
        self.pidNamespace = pidNamespace
        self.mountNamespace = mountNamespace
        self.pauseMilliseconds = pauseMilliseconds
        self.streams = streams
    }
}

/// The little JSON the manifest needs: writing quoted strings, and reading objects, arrays,
/// strings, integers and booleans back.
enum JSON: Equatable {
    case object([String: JSON])
    case array([JSON])
    case string(String)
    case number(Int)
    case bool(Bool)
    case null

    static func quoted(_ text: String) -> String { JSONText.quoted(text) }

    static func parse(_ text: String) -> JSON? {
        var parser = Parser(scalars: Array(text.unicodeScalars))
        guard let value = parser.value() else { return nil }
        parser.skipSpace()
        return parser.index == parser.scalars.count ? value : nil
    }

    struct Parser {
        let scalars: [Unicode.Scalar]
        var index = 0
        var depth = 0

        mutating func skipSpace() {
            while index < scalars.count, [" ", "\n", "\r", "\t"].contains(scalars[index]) { index += 1 }
        }

        mutating func take(_ word: String) -> Bool {
            let w = Array(word.unicodeScalars)
            guard index + w.count <= scalars.count, Array(scalars[index..<index + w.count]) == w else { return false }
            index += w.count
            return true
        }

        mutating func value() -> JSON? {
            skipSpace()
            guard index < scalars.count, depth < 32 else { return nil }
            switch scalars[index] {
            case "{":
                index += 1
                depth += 1
                defer { depth -= 1 }
                var members: [String: JSON] = [:]
                skipSpace()
                if take("}") { return .object(members) }
                while true {
                    skipSpace()
                    guard let key = string(), (skipSpace(), take(":")).1, let v = value() else { return nil }
                    members[key] = v
                    skipSpace()
                    if take(",") { continue }
                    return take("}") ? .object(members) : nil
                }
            case "[":
                index += 1
                depth += 1
                defer { depth -= 1 }
                var items: [JSON] = []
                skipSpace()
                if take("]") { return .array(items) }
                while true {
                    guard let v = value() else { return nil }
                    items.append(v)
                    skipSpace()
                    if take(",") { continue }
                    return take("]") ? .array(items) : nil
                }
            case "\"":
                return string().map(JSON.string)
            case "t": return take("true") ? .bool(true) : nil
            case "f": return take("false") ? .bool(false) : nil
            case "n": return take("null") ? .null : nil
            default:
                var digits = ""
                if take("-") { digits = "-" }
                while index < scalars.count, ("0"..."9").contains(scalars[index]) {
                    digits.unicodeScalars.append(scalars[index])
                    index += 1
                }
                return Int(digits).map(JSON.number)
            }
        }

        mutating func string() -> String? {
            guard take("\"") else { return nil }
            var out = String.UnicodeScalarView()
            while index < scalars.count {
                let c = scalars[index]
                index += 1
                if c == "\"" { return String(out) }
                guard c == "\\" else { out.append(c); continue }
                guard index < scalars.count else { return nil }
                let e = scalars[index]
                index += 1
                switch e {
                case "\"", "\\", "/": out.append(e)
                case "n": out.append("\n")
                case "r": out.append("\r")
                case "t": out.append("\t")
                case "b": out.append("\u{8}")
                case "f": out.append("\u{C}")
                case "u":
                    guard index + 4 <= scalars.count,
                          let code = UInt32(String(String.UnicodeScalarView(scalars[index..<index + 4])), radix: 16),
                          let scalar = Unicode.Scalar(code) else { return nil }
                    index += 4
                    out.append(scalar)
                default: return nil
                }
            }
            return nil
        }
    }
}
