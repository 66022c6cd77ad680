import Foundation
import Testing
import TestSupport
@testable import Overlay

@Suite struct ConfigurationTests {
    /// A home with a user file and a system file in a temp directory; nothing from this machine.
    struct Files {
        let directory: TempDirectory
        init() throws {
            directory = try TempDirectory("config")
            try FileManager.default.createDirectory(atPath: directory.file("xdg/overlay"), withIntermediateDirectories: true)
        }
        var system: String { directory.file("system-config") }
        var user: String { directory.file("xdg/overlay/config") }
        func environment(_ extra: [String: String] = [:]) -> [String: String] {
            var env = ["HOME": directory.path, "XDG_CONFIG_HOME": directory.file("xdg"), "OVERLAY_SYSTEM_CONFIG": system]
            for (key, value) in extra { env[key] = value }
            return env
        }
        func write(_ path: String, _ text: String) throws {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        }
    }

    @Test func nothingSetGivesTheBuiltInDefaults() throws {
        let files = try Files()
        let config = try Configuration.load(environment: files.environment())
        #expect(config.container == .init(value: nil, source: .builtIn))
        #expect(config.runtime == .init(value: "auto", source: .builtIn))
        #expect(config.files == [.init(path: files.system, present: false), .init(path: files.user, present: false)])
    }

    @Test func systemThenUserThenEnvironmentThenFlag() throws {
        let files = try Files()
        try files.write(files.system, "# site defaults\ncontainer = /site/base.sif\nruntime = singularity\n")
        var config = try Configuration.load(environment: files.environment())
        #expect(config.container == .init(value: "/site/base.sif", source: .file(path: files.system, line: 2)))
        #expect(config.runtime == .init(value: "singularity", source: .file(path: files.system, line: 3)))

        try files.write(files.user, "container = ~/images/mine.sif   # my own\n")
        config = try Configuration.load(environment: files.environment())
        #expect(config.container == .init(value: files.directory.path + "/images/mine.sif", source: .file(path: files.user, line: 1)))
        #expect(config.runtime == .init(value: "singularity", source: .file(path: files.system, line: 3)))
        #expect(config.files.map(\.present) == [true, true])

        config = try Configuration.load(environment: files.environment(["OVERLAY_CONTAINER": "/env.sif", "OVERLAY_RUNTIME": "native"]))
        #expect(config.container == .init(value: "/env.sif", source: .environment("OVERLAY_CONTAINER")))
        #expect(config.runtime == .init(value: "native", source: .environment("OVERLAY_RUNTIME")))

        config = try Configuration.load(environment: files.environment(["OVERLAY_CONTAINER": "/env.sif", "OVERLAY_RUNTIME": "native"]),
                                        flags: [.container: "/flag.sif", .runtime: "apptainer"])
        #expect(config.container == .init(value: "/flag.sif", source: .flag("-c")))
        #expect(config.runtime == .init(value: "apptainer", source: .flag("--runtime")))
        #expect(config.container.source.description == "the -c flag")
        #expect(Configuration.Source.file(path: "/etc/overlay/config", line: 2).description == "/etc/overlay/config:2")
    }

    @Test func emptyEnvironmentValuesDoNotOverride() throws {
        let files = try Files()
        try files.write(files.user, "container = /mine.sif\n")
        let config = try Configuration.load(environment: files.environment(["OVERLAY_CONTAINER": ""]))
        #expect(config.container.value == "/mine.sif")
    }

    @Test func userFileDefaultsToDotConfigUnderHome() {
        #expect(Configuration.userPath(environment: ["HOME": "/home/ada"]) == "/home/ada/.config/overlay/config")
        #expect(Configuration.userPath(environment: ["HOME": "/home/ada", "XDG_CONFIG_HOME": "/x"]) == "/x/overlay/config")
        #expect(Configuration.userPath(environment: [:]) == nil)
        #expect(Configuration.systemPath(environment: [:]) == "/etc/overlay/config")
    }

    @Test func theSnapshotStoreComesFromTheEnvironmentThenTheFileThenTheDataHome() throws {
        let directory = try TempDirectory("config")
        let file = directory.file("config/overlay/config")
        try FileManager.default.createDirectory(atPath: directory.file("config/overlay"), withIntermediateDirectories: true)
        let base = ["HOME": "/home/ada", "XDG_CONFIG_HOME": directory.file("config"), "OVERLAY_SYSTEM_CONFIG": directory.file("none")]
        #expect(try Configuration.load(environment: base).snapshots == .init(value: "/home/ada/.local/share/overlay/snapshots", source: .builtIn))
        var withData = base
        withData["XDG_DATA_HOME"] = "/data/ada"
        #expect(try Configuration.load(environment: withData).snapshots.value == "/data/ada/overlay/snapshots")
        try "snapshots = ~/snaps\n".write(toFile: file, atomically: false, encoding: .utf8)
        #expect(try Configuration.load(environment: withData).snapshots == .init(value: "/home/ada/snaps", source: .file(path: file, line: 1)))
        withData["OVERLAY_SNAPSHOTS"] = "/scratch/ada/snaps"
        #expect(try Configuration.load(environment: withData).snapshots == .init(value: "/scratch/ada/snaps", source: .environment("OVERLAY_SNAPSHOTS")))
    }

    @Test func quotesAndSpacingAreForgiven() throws {
        let parsed = try Configuration.parse("  container=\"/a b/c.sif\"\n\truntime =  'native'  \n\n#x=y\n", path: "f")
        #expect(parsed[.container]?.value == "/a b/c.sif")
        #expect(parsed[.runtime] == .init(value: "native", source: .file(path: "f", line: 2)))
    }

    @Test func malformedLinesNameTheFileAndLine() throws {
        #expect(throws: OverlayError.message("/etc/overlay/config:2: unknown setting 'contaner': use container, runtime or snapshots")) {
            try Configuration.parse("runtime = auto\ncontaner = /x.sif\n", path: "/etc/overlay/config")
        }
        #expect(throws: OverlayError.message("f:1: expected 'key = value', found 'container /x.sif'")) {
            try Configuration.parse("container /x.sif", path: "f")
        }
        #expect(throws: OverlayError.message("f:3: 'runtime' has no value: write 'runtime = VALUE' or remove the line")) {
            try Configuration.parse("\n\nruntime =\n", path: "f")
        }
        let files = try Files()
        try files.write(files.user, "bogus\n")
        #expect(throws: OverlayError.message("\(files.user):1: expected 'key = value', found 'bogus'")) {
            try Configuration.load(environment: files.environment())
        }
    }
}
