import Foundation
import Testing
import TestSupport

/// The configuration files, the environment and the flags, as run-overlay and `overlay config`
/// see them (the runtime is the stand-in Apptainer; see SingularityStandIn).
@Suite("Configuration: file < environment < flag", .requires(executable: "mke2fs"), .requires(executable: "debugfs"))
struct SingularityConfigurationTests {
    func write(_ text: String, to path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }

    @Test func runOverlayTakesTheContainerFromFileThenEnvironmentThenFlag() throws {
        let scene = try SingularityScene()
        try scene.overlay("env.ext3")
        try write("container = docker://site/base\n", to: scene.file("system-config"))
        func image(_ arguments: [String] = [], _ environment: [String: String] = [:]) throws -> String? {
            let result = try scene.run("run-overlay", arguments + ["-o", "env.ext3:ro", "--", "true"], environment: environment)
            #expect(result.status == 0, "\(result)")
            return scene.standIn.arguments()?.dropLast().last
        }
        #expect(try image() == "docker://site/base")
        try write("container = docker://mine/env\n", to: scene.file("config/overlay/config"))
        #expect(try image() == "docker://mine/env")
        #expect(try image([], ["OVERLAY_CONTAINER": "docker://from/env"]) == "docker://from/env")
        #expect(try image(["-c", "docker://from/flag"], ["OVERLAY_CONTAINER": "docker://from/env"]) == "docker://from/flag")
    }

    @Test func runtimeFromTheFileIsObeyedAndOverridden() throws {
        let scene = try SingularityScene(standIns: ["apptainer", "singularity"])
        try scene.overlay("env.ext3")
        try write("runtime = singularity\ncontainer = docker://x\n", to: scene.file("config/overlay/config"))
        let fromFile = try scene.run("run-overlay", ["-o", "env.ext3", "--", "true"])
        #expect(fromFile.status == 0, "\(fromFile)")
        #expect(scene.standIn.arguments("singularity") != nil)
        #expect(scene.standIn.arguments("apptainer") == nil)

        let fromEnvironment = try scene.run("run-overlay", ["-o", "env.ext3", "--", "true"], environment: ["OVERLAY_RUNTIME": "apptainer"])
        #expect(fromEnvironment.status == 0, "\(fromEnvironment)")
        #expect(scene.standIn.arguments("apptainer") != nil)

        let bad = try scene.run("run-overlay", ["-o", "env.ext3", "--", "true"], environment: ["OVERLAY_RUNTIME": "docker"])
        #expect(bad.status == 1)
        #expect(bad.stderr == "error: unknown runtime 'docker' (from $OVERLAY_RUNTIME): use auto, native, singularity or apptainer\n")
    }

    @Test func aContainerThatIsNotThereSaysWhereItWasSet() throws {
        let scene = try SingularityScene()
        try scene.overlay("env.ext3")
        let result = try scene.run("run-overlay", ["-o", "env.ext3", "--", "true"],
                                   environment: ["OVERLAY_CONTAINER": scene.file("gone.sif")])
        #expect(result.status == 1)
        #expect(result.stderr == "error: container '\(scene.file("gone.sif"))' not found: give a SIF file, a squashfs image, a sandbox directory or / with -c (from $OVERLAY_CONTAINER)\n")
        #expect(!scene.standIn.started)
    }

    @Test func aURIIsForSingularityOnly() throws {
        let scene = try SingularityScene(standIns: [])
        try scene.overlay("env.ext3")
        try write("container = docker://ubuntu\n", to: scene.file("config/overlay/config"))
        let result = try scene.run("run-overlay", ["--runtime", "native", "-o", "env.ext3", "--", "true"])
        #expect(result.status == 1)
        #expect(result.stderr == "error: container 'docker://ubuntu' (from \(scene.file("config/overlay/config")):1) is a URI only Singularity/Apptainer can pull: use --runtime apptainer, or give a local SIF file, squashfs image or directory\n")
    }

    @Test func aBrokenFileIsOneLineNamingIt() throws {
        let scene = try SingularityScene()
        try scene.overlay("env.ext3")
        try write("container: /x.sif\n", to: scene.file("system-config"))
        let result = try scene.run("run-overlay", ["-o", "env.ext3", "-c", "docker://x", "--", "true"])
        #expect(result.status == 1)
        #expect(result.stderr == "error: \(scene.file("system-config")):1: expected 'key = value', found 'container: /x.sif'\n")
        #expect(!scene.standIn.started)
    }

    @Test func overlayConfigShowsValuesAndWhereEachCameFrom() throws {
        let scene = try SingularityScene()
        try write("container = /site/base.sif\nruntime = native\n", to: scene.file("system-config"))
        try write("# mine\nruntime = apptainer\n", to: scene.file("config/overlay/config"))
        var result = try scene.run("overlay", ["config"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout == """
            container: /site/base.sif
              from: \(scene.file("system-config")):1
            runtime: apptainer
              from: \(scene.file("config/overlay/config")):2
            snapshots: \(scene.file(".local/share/overlay/snapshots"))
              from: the built-in default
            files (the user's overrides the system-wide one; the environment and flags override both):
              \(scene.file("system-config")): read
              \(scene.file("config/overlay/config")): read

            """)

        result = try scene.run("overlay", ["config", "--runtime", "auto"], environment: ["OVERLAY_CONTAINER": "/env.sif"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout.hasPrefix("""
            container: /env.sif
              from: $OVERLAY_CONTAINER
            runtime: auto (here: apptainer at \(scene.standIn.path)/apptainer)
              from: the --runtime flag

            """), "\(result)")

        result = try scene.run("overlay", ["config", "-c", "/flag.sif"])
        #expect(result.stdout.hasPrefix("container: /flag.sif\n  from: the -c flag\n"), "\(result)")
    }

    @Test func overlayConfigWithNothingSet() throws {
        let scene = try SingularityScene(standIns: [])
        let result = try scene.run("overlay", ["config"])
        #expect(result.status == 0, "\(result)")
        #expect(result.stdout.hasPrefix("""
            container: none (the native runtime uses the host, /)
              from: the built-in default
            runtime: auto (here: native)
              from: the built-in default
            snapshots: \(scene.file(".local/share/overlay/snapshots"))
              from: the built-in default
            files (the user's overrides the system-wide one; the environment and flags override both):
              \(scene.file("system-config")): not present
              \(scene.file("config/overlay/config")): not present

            """), "\(result)")
    }
}
