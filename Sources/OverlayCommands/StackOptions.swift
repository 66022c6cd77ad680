import ArgumentParser
import Overlay
import Runtime

#if canImport(Glibc)
import Glibc
#endif

/// Options shared by run-overlay and mount-overlay.
public struct StackOptions: ParsableArguments {
    public init() {}

    @Option(name: .shortAndLong, parsing: .singleValue,
            help: ArgumentHelp("Overlay image; the first is writable unless it ends in :ro, the rest are read-only. Repeat to stack.",
                               valueName: "image[:ro]"))
    public var overlay: [String] = []

    @Option(name: .shortAndLong,
            help: ArgumentHelp("Container: a SIF file, a squashfs image, a sandbox directory, or / (default: $OVERLAY_CONTAINER, else /).",
                               valueName: "container"))
    public var container: String?

    @Option(name: [.customShort("B"), .customLong("bind")], parsing: .singleValue,
            help: ArgumentHelp("Bind a host path into the container. Repeatable.", valueName: "src[:dst[:ro]]"))
    public var bind: [String] = []

    @Option(help: ArgumentHelp("Runtime: auto (Apptainer/Singularity when on PATH, else native), native, singularity, apptainer (default: $OVERLAY_RUNTIME, else auto).",
                               valueName: "runtime"))
    public var runtime: String?

    @Option(name: .customLong("runtime-option"), parsing: .unconditionalSingleValue,
            help: ArgumentHelp("Pass an option to Singularity/Apptainer as is, e.g. --runtime-option=--nv. Repeatable.",
                               valueName: "option"))
    public var runtimeOptions: [String] = []

    @Flag(help: "Print the plan (mounts and command) and do nothing.")
    public var dryRun = false

    public func validate() throws {
        if overlay.isEmpty { throw ValidationError(OverlayError.noOverlays.description) }
        do {
            _ = try OverlayStack(arguments: overlay)
            for b in bind { _ = try Bind(parsing: b) }
        } catch let error as OverlayError {
            throw ValidationError(error.description)
        }
        if let runtime, RuntimeKind(rawValue: runtime) == nil {
            throw ValidationError("unknown runtime '\(runtime)': use auto, native, singularity or apptainer")
        }
    }

    /// The runtime kind: the flag, else `$OVERLAY_RUNTIME`, else auto.
    public func runtimeKind(environment: [String: String] = currentEnvironment()) throws -> RuntimeKind {
        let text = runtime ?? environment["OVERLAY_RUNTIME"] ?? "auto"
        guard let kind = RuntimeKind(rawValue: text) else {
            throw ValidationError("unknown runtime '\(text)' (from $OVERLAY_RUNTIME): use auto, native, singularity or apptainer")
        }
        return kind
    }

    /// Builds the validated job for `command`.
    public func job(command: JobCommand, environment: [String: String] = currentEnvironment()) throws -> Job {
        let stack = try OverlayStack(arguments: overlay)
        let containerPath = container ?? environment["OVERLAY_CONTAINER"] ?? "/"
        let reference = try ContainerReference.detect(containerPath)
        let binds = try bind.map(Bind.init(parsing:))
        return Job(stack: stack, container: reference, binds: binds, command: command,
                   workingDirectory: currentDirectory(), runtimeOptions: runtimeOptions)
    }

    /// Runs (or, with --dry-run, prints) the job; exits with the job's status.
    func execute(_ command: JobCommand) throws {
        do {
            let job = try job(command: command)
            let runtime = try RuntimeSelection.make(try runtimeKind())
            if dryRun {
                for line in try runtime.plan(for: job) { print(line) }
                return
            }
            let status = try runtime.run(job)
            if status != 0 { throw ExitCode(status) }
        } catch let error as OverlayError {
            throw CommandFailure(error.description)
        } catch let error as RuntimeError {
            throw CommandFailure(error.description)
        }
    }
}

/// A one-line failure: printed as `error: <text>`, exit status 1.
public struct CommandFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public func currentEnvironment() -> [String: String] {
    var result: [String: String] = [:]
    var pointer = environ
    while let entry = pointer.pointee {
        let text = String(cString: entry)
        if let eq = text.firstIndex(of: "=") {
            result[String(text[..<eq])] = String(text[text.index(after: eq)...])
        }
        pointer += 1
    }
    return result
}

func currentDirectory() -> String {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    guard getcwd(&buffer, buffer.count) != nil else { return "/" }
    return String(cString: buffer)
}
