import Foundation

/// The result of running a program to completion.
public struct ProcessResult: Sendable, CustomStringConvertible {
    public let status: Int32
    /// Set when the program was killed by a signal.
    public let signal: Int32?
    public let stdout: String
    public let stderr: String

    public var description: String {
        "status \(status)\(signal.map { " (signal \($0))" } ?? "")\nstdout: \(stdout)\nstderr: \(stderr)"
    }
}

/// Runs `argv` (argv[0] looked up on PATH and in sbin) and waits. Stdin is /dev/null unless given.
@discardableResult
public func run(_ argv: [String], environment: [String: String]? = nil, currentDirectory: String? = nil,
                stdin: String? = nil) throws -> ProcessResult {
    let process = Process()
    let executable = argv[0].contains("/") ? argv[0] : (which(argv[0]) ?? argv[0])
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = Array(argv.dropFirst())
    if let environment { process.environment = environment }
    if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    if let stdin {
        let input = Pipe()
        process.standardInput = input
        try process.run()
        input.fileHandleForWriting.write(Data(stdin.utf8))
        try input.fileHandleForWriting.close()
    } else {
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }
    // Read both pipes concurrently so a chatty program cannot block on a full pipe.
    let group = DispatchGroup()
    nonisolated(unsafe) var errData = Data()
    group.enter()
    DispatchQueue.global().async {
        errData = err.fileHandleForReading.readDataToEndOfFile()
        group.leave()
    }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    let signaled = process.terminationReason == .uncaughtSignal
    return ProcessResult(status: signaled ? 128 + process.terminationStatus : process.terminationStatus,
                         signal: signaled ? process.terminationStatus : nil,
                         stdout: String(decoding: outData, as: UTF8.self),
                         stderr: String(decoding: errData, as: UTF8.self))
}

/// Directory holding the built products (`.build/debug`): where the test bundle itself lives.
public var productsDirectory: URL {
    let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    var dir = exe.deletingLastPathComponent()
    // swift-testing on Linux runs `<pkg>PackageTests.xctest` from .build/<triple>/debug
    while dir.path != "/" {
        if FileManager.default.fileExists(atPath: dir.appendingPathComponent("create-overlay").path) { return dir }
        dir = dir.deletingLastPathComponent()
    }
    return exe.deletingLastPathComponent()
}

/// The path of a built executable of this package.
public func product(_ name: String) -> String {
    productsDirectory.appendingPathComponent(name).path
}
