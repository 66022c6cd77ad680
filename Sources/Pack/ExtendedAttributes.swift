import Ext3
import LinuxSupport
#if canImport(Glibc)
import Glibc
#endif

/// Extended attributes of the entries of a directory being read, never following a symlink.
extension Ext3.Tree {
    /// Whose extended attributes to read (never following a symlink).
    enum XattrTarget {
        /// The entry `name` of the open directory: listxattrat/getxattrat.
        case relative(directory: Int32, name: UnsafePointer<CChar>)
        /// A NUL-terminated full path: llistxattr/lgetxattr.
        case path(UnsafePointer<CChar>)

        func list(_ buffer: UnsafeMutablePointer<CChar>?, _ size: Int) -> Int {
            switch self {
            case let .relative(directory, name): Int(FileCalls.listxattrat(directory, name, buffer, size))
            case let .path(path): FileCalls.llistxattr(path, buffer, size)
            }
        }

        func get(_ attribute: UnsafePointer<CChar>, _ buffer: UnsafeMutableRawPointer?, _ size: Int) -> Int {
            switch self {
            case let .relative(directory, name): Int(FileCalls.getxattrat(directory, name, attribute, buffer, size))
            case let .path(path): FileCalls.lgetxattr(path, attribute, buffer, size)
            }
        }
    }

    /// Every extended attribute of `target`, sorted by name.
    static func readXattrs(_ target: XattrTarget, display shown: @autoclosure () -> String) throws -> [(name: String, value: [UInt8])] {
        var length = target.list(nil, 0)
        if length < 0 {
            if errno == ENOTSUP || errno == ENOSYS { return [] }
            throw Ext3.Error.system(operation: "list extended attributes", path: shown(), errno: errno)
        }
        if length == 0 { return [] }
        var names = [CChar](repeating: 0, count: length)
        length = target.list(&names, names.count)
        guard length >= 0 else { throw Ext3.Error.system(operation: "list extended attributes", path: shown(), errno: errno) }
        var result: [(name: String, value: [UInt8])] = []
        var start = 0
        while start < length {
            let end = names[start..<length].firstIndex(of: 0) ?? length
            let nameBytes = Array(names[start..<end]) + [0]
            start = end + 1
            let name = String(decoding: nameBytes.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
            var size = target.get(nameBytes, nil, 0)
            if size < 0 {
                if errno == ENODATA { continue }
                throw Ext3.Error.system(operation: "read extended attribute \(name)", path: shown(), errno: errno)
            }
            var value = [UInt8](repeating: 0, count: size)
            size = value.withUnsafeMutableBytes { target.get(nameBytes, $0.baseAddress, $0.count) }
            guard size >= 0 else {
                throw Ext3.Error.system(operation: "read extended attribute \(name)", path: shown(), errno: errno)
            }
            result.append((name, Array(value[..<size])))
        }
        return result.sorted { $0.name < $1.name }
    }
}
