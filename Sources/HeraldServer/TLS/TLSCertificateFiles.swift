import Foundation
import NIOCore
import NIOSSL

/// Where a TLS node's certificate and private key are (`herald serve --tls-cert --tls-key`).
/// Both are read at start-up and again on every reload (SIGHUP).
public struct TLSCertificateFiles: Sendable, Equatable {
    /// PEM file of the server certificate, optionally followed by its intermediates (the full
    /// chain, leaf first).
    public var certificateChain: String
    /// PEM file of the certificate's private key (PKCS#8, RSA or EC).
    public var privateKey: String

    public init(certificateChain: String, privateKey: String) {
        self.certificateChain = certificateChain
        self.privateKey = privateKey
    }

    /// Reads both files and builds a server context from them. `shutdownTimeout` bounds how
    /// long a closing connection waits for the client's close_notify.
    /// - Throws: ``ConfigurationError`` naming the file (and flag) at fault and why.
    func makeContext(shutdownTimeout: TimeAmount) throws(ConfigurationError) -> NIOSSLContext {
        let chainBytes = try Self.read(certificateChain, flag: "--tls-cert")
        let keyBytes = try Self.read(privateKey, flag: "--tls-key")
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMBytes(chainBytes)
        } catch {
            throw ConfigurationError("--tls-cert \(certificateChain): not a PEM certificate chain (\(error))")
        }
        guard !chain.isEmpty else {
            throw ConfigurationError("--tls-cert \(certificateChain): no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
        }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(bytes: keyBytes, format: .pem)
        } catch {
            throw ConfigurationError("--tls-key \(privateKey): not a PEM private key (\(error))")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) },
            privateKey: .privateKey(key)
        )
        configuration.shutdownTimeout = shutdownTimeout
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw ConfigurationError(
                "--tls-key \(privateKey) does not fit --tls-cert \(certificateChain) (the key must be the first certificate's): \(error)"
            )
        }
    }

    private static func read(_ path: String, flag: String) throws(ConfigurationError) -> [UInt8] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConfigurationError("\(flag) \(path): cannot read it: no such file")
        }
        guard !isDirectory.boolValue else { throw ConfigurationError("\(flag) \(path): cannot read it: a directory, not a file") }
        do {
            return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw ConfigurationError("\(flag) \(path): cannot read it: \(error.localizedDescription)")
        }
    }
}
