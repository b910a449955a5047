// swift-tools-version:5.4
// Fuzz targets for Herald (libFuzzer). Not part of the main package: build and run them with
// `scripts/fuzz`, which passes the sanitizer flags; see Fuzz/README.md.
//
// Tools version 5.4 on purpose: from 5.5 on, SwiftPM renames an executable's entry point to
// `<Target>_main` and links `main` to it (`--defsym`), which fails for a fuzzer, whose `main`
// is libFuzzer's (the targets are compiled with `-parse-as-library` and have no entry point).
import Foundation
import PackageDescription

// A path dependency's identity is the name of its directory, which depends on where the
// repository was cloned ("herald", "main", …): work it out instead of hard-coding it.
let herald = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent.lowercased()

// No `main`: libFuzzer provides it and calls `LLVMFuzzerTestOneInput`.
let fuzzerSettings: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]

let package = Package(
    name: "HeraldFuzz",
    platforms: [.macOS("15.0")],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .target(
            name: "FuzzSupport",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        .executableTarget(
            name: "FuzzWebSocketFrame",
            dependencies: [
                "FuzzSupport",
                .product(name: "HeraldServer", package: herald),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: fuzzerSettings
        ),
        .executableTarget(
            name: "FuzzJSON",
            dependencies: [
                "FuzzSupport",
                .product(name: "HeraldWire", package: herald),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: fuzzerSettings
        ),
        .executableTarget(
            name: "FuzzClientFrame",
            dependencies: [
                "FuzzSupport",
                .product(name: "HeraldWire", package: herald),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: fuzzerSettings
        ),
        .executableTarget(
            name: "FuzzRESP",
            dependencies: [
                "FuzzSupport",
                .product(name: "HeraldRedisClient", package: herald),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: fuzzerSettings
        ),
        .executableTarget(
            name: "FuzzPublishRequest",
            dependencies: [
                "FuzzSupport",
                .product(name: "HeraldServer", package: herald),
                .product(name: "Herald", package: herald),
                .product(name: "HeraldWire", package: herald),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: fuzzerSettings
        ),
    ]
)
