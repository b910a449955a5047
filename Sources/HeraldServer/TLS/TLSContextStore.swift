import Logging
import NIOCore
import NIOSSL
import Synchronization

/// The TLS context new connections are served with, swapped when the certificate is reloaded.
///
/// Every accepted connection takes the current context once, when its TLS handler is created;
/// a reload (SIGHUP, ``HeraldNode/reloadCertificates()``) only changes what later connections
/// get, so open connections keep their session untouched. A reload that fails (a file missing,
/// half written, or a key that does not fit) keeps the previous context: a bad file never
/// breaks a running server.
final class TLSContextStore: Sendable {
    let files: TLSCertificateFiles
    private let shutdownTimeout: TimeAmount
    private let current: Mutex<NIOSSLContext>

    /// Loads the files once.
    /// - Throws: ``ConfigurationError`` naming the file at fault, so the node does not start.
    init(files: TLSCertificateFiles, shutdownTimeout: TimeAmount) throws(ConfigurationError) {
        self.files = files
        self.shutdownTimeout = shutdownTimeout
        self.current = Mutex(try files.makeContext(shutdownTimeout: shutdownTimeout))
    }

    /// The context for a new connection.
    var context: NIOSSLContext {
        current.withLock { $0 }
    }

    /// Re-reads both files; on success new connections use them. Logs the outcome.
    /// - Returns: whether the new certificate is in use.
    @discardableResult
    func reload(logger: Logger) -> Bool {
        let context: NIOSSLContext
        do {
            context = try files.makeContext(shutdownTimeout: shutdownTimeout)
        } catch {
            logger.error(
                "TLS certificate reload failed, still serving the previous certificate: \(error.message)",
                metadata: ["cert": .string(files.certificateChain), "key": .string(files.privateKey)]
            )
            return false
        }
        current.withLock { $0 = context }
        logger.info(
            "TLS certificate reloaded: new connections use it, open ones keep theirs",
            metadata: ["cert": .string(files.certificateChain), "key": .string(files.privateKey)]
        )
        return true
    }
}
