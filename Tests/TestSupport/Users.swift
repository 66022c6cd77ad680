import Foundation

/// An ordinary (non-root) user for tests of what users without privileges see. Created once
/// with `useradd` if missing (idempotent across tests and runs); needs root.
public struct TestUser: Sendable {
    public let name: String
    public let uid: UInt32
    public let gid: UInt32
    public let home: String

    /// The shared test user, `overlaytest`.
    public static func ensure(_ name: String = "overlaytest") throws -> TestUser {
        if getpwnam(name) == nil {
            let result = try TestSupport.run(["useradd", "--create-home", "--shell", "/bin/bash", name])
            // Another test may have created it in between: only fail if it still is not there.
            if result.status != 0, getpwnam(name) == nil {
                throw TestUserError(text: "useradd \(name) failed: \(result.stderr)")
            }
        }
        guard let entry = getpwnam(name) else { throw TestUserError(text: "user \(name) missing after useradd") }
        return TestUser(name: name, uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid,
                        home: String(cString: entry.pointee.pw_dir))
    }

    /// Runs `argv` as this user through `runuser`, with a login-like environment, at most
    /// `timeout` seconds.
    @discardableResult
    public func run(_ argv: [String], currentDirectory: String? = nil, environment: [String: String] = [:],
                    timeout: TimeInterval = 300) throws -> ProcessResult {
        var env = ["HOME": home, "USER": name, "LOGNAME": name, "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                   "LANG": "C.UTF-8"]
        for (k, v) in environment { env[k] = v }
        let envArgs = env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        return try TestSupport.run(["runuser", "-u", name, "--", "/usr/bin/env", "-i"] + envArgs + argv,
                                   currentDirectory: currentDirectory, timeout: timeout)
    }

    /// Makes /dev/fuse usable by ordinary users (it is 0600 on these machines).
    public static func openFuseToUsers() {
        chmod("/dev/fuse", 0o666)
    }
}

public struct TestUserError: Error, CustomStringConvertible {
    public let text: String
    public var description: String { text }
}
