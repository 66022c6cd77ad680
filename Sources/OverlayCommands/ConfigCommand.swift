import LinuxSupport
import ArgumentParser
import Overlay
import Runtime

/// `overlay config`: the effective default container and runtime, and where each comes from.
public struct ConfigCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Show the default container and runtime run-overlay and mount-overlay use, and where each comes from.",
        discussion: """
        Each value comes from the first of: the flag (-c, --runtime), the environment \
        ($OVERLAY_CONTAINER, $OVERLAY_RUNTIME, $OVERLAY_SNAPSHOTS), the user's file \
        ${XDG_CONFIG_HOME:-~/.config}/overlay/config, the system-wide file /etc/overlay/config \
        ($OVERLAY_SYSTEM_CONFIG names another), the built-in default (runtime auto, no container, snapshots in \
        ${XDG_DATA_HOME:-~/.local/share}/overlay/snapshots). \
        The files hold 'key = value' lines and # comments, for example:
          container = /project/images/pytorch.sif
          runtime = apptainer
          snapshots = /project/me/snapshots
        """
    )

    public init() {}

    @Option(name: .shortAndLong, help: ArgumentHelp("Show the effect of giving -c with this container.", valueName: "container"))
    public var container: String?

    @Option(help: ArgumentHelp("Show the effect of giving --runtime with this runtime.", valueName: "runtime"))
    public var runtime: String?

    public func run() throws {
        var flags: [Configuration.Key: String] = [:]
        if let container { flags[.container] = container }
        if let runtime { flags[.runtime] = runtime }
        let settings = try Configuration.load(environment: currentEnvironment(), flags: flags)
        for line in Self.report(settings) { print(line) }
        if let value = settings.runtime.value, RuntimeKind(rawValue: value) == nil {
            throw CommandFailure("unknown runtime '\(value)' (from \(settings.runtime.source)): use auto, native, singularity or apptainer")
        }
    }

    /// The lines `overlay config` prints.
    static func report(_ settings: Configuration) -> [String] {
        var lines: [String] = []
        let runtimeText = settings.runtime.value ?? Configuration.defaultRuntime
        let kind = RuntimeKind(rawValue: runtimeText)
        if let value = settings.container.value {
            lines.append("container: \(value)")
        } else {
            let singularity = kind.map(RuntimeSelection.choosesSingularity) ?? false
            lines.append("container: none" + (singularity
                ? " (Singularity needs one: give -c IMAGE or set container in a config file)"
                : " (the native runtime uses the host, /)"))
        }
        lines.append("  from: \(settings.container.source)")
        switch kind {
        case .some(.auto):
            if let chosen = try? RuntimeSelection.make(.auto) {
                let detail = (chosen as? SingularityRuntime).map { "\($0.name) at \($0.executable)" } ?? chosen.name
                lines.append("runtime: auto (here: \(detail))")
            } else {
                lines.append("runtime: auto")
            }
        case .some:
            lines.append("runtime: \(runtimeText)")
        case .none:
            lines.append("runtime: \(runtimeText) (unknown: use auto, native, singularity or apptainer)")
        }
        lines.append("  from: \(settings.runtime.source)")
        lines.append("snapshots: \(settings.snapshots.value ?? "none (set $OVERLAY_SNAPSHOTS, or snapshots in a config file)")")
        lines.append("  from: \(settings.snapshots.source)")
        lines.append("files (the user's overrides the system-wide one; the environment and flags override both):")
        for file in settings.files {
            lines.append("  \(file.path): \(file.present ? "read" : "not present")")
        }
        return lines
    }
}
