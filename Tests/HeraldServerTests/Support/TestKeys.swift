import Foundation
import HeraldServer
import JWTKit

/// Real key pairs made by `openssl` for these tests (RSA 2048, P-256, P-384, Ed25519), as PEM
/// files in a temporary directory: what an operator hands `--jwt-public-key`.
struct TestKeys: Sendable {
    enum Kind: String, CaseIterable, Sendable {
        case rsa, p256, p384, ed25519

        var genpkeyArguments: [String] {
            switch self {
            case .rsa: ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
            case .p256: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
            case .p384: ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]
            case .ed25519: ["-algorithm", "ed25519"]
            }
        }
    }

    let directory: URL

    /// Generated once per test process (a set per `name`).
    static func shared(_ name: String = "a") throws -> TestKeys {
        try cache.withLock { cache in
            if let keys = cache[name] { return keys }
            let keys = try TestKeys.generate()
            cache[name] = keys
            return keys
        }
    }

    private static let cache = LockedDictionary()

    static func generate() throws -> TestKeys {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-keys-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for kind in Kind.allCases {
            let privatePath = directory.appendingPathComponent("\(kind.rawValue).pem").path
            try openssl(["genpkey"] + kind.genpkeyArguments + ["-out", privatePath])
            try openssl(["pkey", "-in", privatePath, "-pubout", "-out", directory.appendingPathComponent("\(kind.rawValue).pub.pem").path])
        }
        return TestKeys(directory: directory)
    }

    private static func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw KeyError("openssl \(arguments.joined(separator: " ")) failed") }
    }

    func privatePath(_ kind: Kind) -> String { directory.appendingPathComponent("\(kind.rawValue).pem").path }
    func publicPath(_ kind: Kind) -> String { directory.appendingPathComponent("\(kind.rawValue).pub.pem").path }
    func privatePEM(_ kind: Kind) throws -> String { try String(contentsOfFile: privatePath(kind), encoding: .utf8) }
    func publicPEM(_ kind: Kind) throws -> String { try String(contentsOfFile: publicPath(kind), encoding: .utf8) }

    /// The signing key of `kind`.
    func signer(_ kind: Kind, kid: String? = nil) async throws -> TokenKey {
        try await TokenKey.pem(privatePEM(kind), kid: kid, source: privatePath(kind))
    }

    /// The verifying (public) key of `kind`.
    func verifier(_ kind: Kind, kid: String? = nil, algorithm: TokenAlgorithm? = nil) async throws -> TokenKey {
        try await TokenKey.pem(publicPEM(kind), kid: kid, algorithm: algorithm, source: publicPath(kind))
    }

    /// The public key of `kind` as a JWKS entry (`alg` only when given).
    func jwk(_ kind: Kind, kid: String, alg: String? = nil) throws -> [String: String] {
        var entry: [String: String] = ["kid": kid]
        if let alg { entry["alg"] = alg }
        switch kind {
        case .rsa:
            let (modulus, exponent) = try Insecure.RSA.PublicKey(pem: publicPEM(kind)).getKeyPrimitives()
            entry["kty"] = "RSA"
            entry["n"] = modulus.base64URL
            entry["e"] = exponent.base64URL
        case .p256:
            let (x, y) = try ES256PublicKey(pem: publicPEM(kind)).parameters!
            entry.merge(["kty": "EC", "crv": "P-256", "x": x, "y": y]) { $1 }
        case .p384:
            let (x, y) = try ES384PublicKey(pem: publicPEM(kind)).parameters!
            entry.merge(["kty": "EC", "crv": "P-384", "x": x, "y": y]) { $1 }
        case .ed25519:
            let raw = try EdDSA.PublicKey(pem: publicPEM(kind)).rawRepresentation
            entry.merge(["kty": "OKP", "crv": "Ed25519", "x": raw.base64URL]) { $1 }
        }
        return entry
    }

    /// Writes a JWKS of `entries` to `path` (atomically: a rotation never shows half a file).
    static func writeJWKS(_ entries: [[String: String]], to path: String) throws {
        let data = try JSONSerialization.data(withJSONObject: ["keys": entries])
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}

struct KeyError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

final class LockedDictionary: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [String: TestKeys] = [:]
    func withLock<T>(_ body: (inout [String: TestKeys]) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&values)
    }
}

extension Data {
    var base64URL: String {
        base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }
}

extension String {
    var base64URL: String { Data(utf8).base64URL }
}
