import Foundation
import Herald
import NIOSSL
import Testing

@testable import HeraldServer

#if canImport(Glibc)
import Glibc
#endif

/// `herald serve --tls-cert --tls-key`: wss:// and https:// on one port, a plain-HTTP client
/// told so, and certificates reloaded without dropping connections. Certificates are made by
/// the `openssl` CLI into a temporary directory, for 127.0.0.1 and localhost.
@Suite("TLS")
struct TLSTests {
    @Test func pythonWebSocketClientOverWSSReceivesAMessagePublishedOverHTTPS() async throws {
        let pki = try TestPKI()
        let files = try pki.issueServerCertificate(ca: pki.makeCA("one"), name: "server")
        try await TestServer.with({ $0.tls = files }) { server in
            // Connects over wss trusting only the test CA, reads its welcome, joins a room,
            // publishes to it over https and reads the message back.
            let script = #"""
                import json, ssl, sys, urllib.request
                from websockets.sync.client import connect
                port, ca = sys.argv[1], sys.argv[2]
                ctx = ssl.create_default_context(cafile=ca)
                with connect(f"wss://127.0.0.1:{port}/ws?user=py", ssl=ctx, open_timeout=5, close_timeout=2) as ws:
                    welcome = json.loads(ws.recv(timeout=5))
                    assert welcome["type"] == "welcome", welcome
                    ws.send(json.dumps({"type": "join", "room": "secure", "id": 1}))
                    while True:
                        frame = json.loads(ws.recv(timeout=5))
                        if frame["type"] == "joined":
                            break
                    request = urllib.request.Request(
                        f"https://127.0.0.1:{port}/api/rooms/secure/publish", method="POST",
                        data=json.dumps({"data": "over tls"}).encode(), headers={"Content-Type": "application/json"})
                    status = urllib.request.urlopen(request, context=ctx, timeout=5).status
                    assert status == 202, status
                    while True:
                        frame = json.loads(ws.recv(timeout=5))
                        if frame["type"] == "message":
                            print("RECEIVED", frame["data"])
                            break
                """#
            let run = try await runTool("/usr/bin/env", ["python3", "-c", script, String(server.port), pki.caPath("one")])
            #expect(run.status == 0, "\(run.output)")
            #expect(run.output.contains("RECEIVED over tls"), "\(run.output)")
        }
    }

    @Test func swiftWebSocketClientOverWSS() async throws {
        let pki = try TestPKI()
        let files = try pki.issueServerCertificate(ca: pki.makeCA("one"), name: "server")
        try await TestServer.with({ $0.tls = files }) { server in
            let client = try await TestClient.connect(port: server.port, query: "user=ann", tls: try pki.clientConfiguration(trusting: "one"))
            _ = try await client.next(type: "welcome")
            try await client.send(#"{"type":"join","room":"r","id":1}"#)
            _ = try await client.next(type: "joined")
            let published = try await pki.curl(
                ["-X", "POST", "-H", "Content-Type: application/json", "--data", #"{"data":"hello"}"#], port: server.port, path: "/api/rooms/r/publish",
                trusting: "one")
            #expect(published.output.hasSuffix("202"), "\(published.output)")
            let message = try await client.next(type: "message")
            #expect(message["data"] as? String == "hello")
            await client.close()
        }
    }

    @Test func httpsHealthCheckNeedsTheCA() async throws {
        let pki = try TestPKI()
        let files = try pki.issueServerCertificate(ca: pki.makeCA("one"), name: "server")
        try await TestServer.with({ $0.tls = files }) { server in
            let trusted = try await pki.curl([], port: server.port, path: "/healthz", trusting: "one")
            #expect(trusted.status == 0 && trusted.output.hasSuffix("200"), "\(trusted.output)")
            let untrusted = try await pki.curl([], port: server.port, path: "/healthz", trusting: nil)
            // 60: the peer's certificate cannot be verified with the known CA certificates.
            #expect(untrusted.status == 60, "\(untrusted.output)")
            // And the server, having dropped that handshake, still serves.
            let again = try await pki.curl([], port: server.port, path: "/healthz", trusting: "one")
            #expect(again.output.hasSuffix("200"), "\(again.output)")
        }
    }

    @Test func plainHTTPOnTheTLSPortGetsA400AndIsClosed() async throws {
        let pki = try TestPKI()
        let files = try pki.issueServerCertificate(ca: pki.makeCA("one"), name: "server")
        try await TestServer.with({ $0.tls = files }) { server in
            let port = server.port
            let answer = try await withTimeout(5, "the 400 and the close") {
                let fd = try connectLoopback(port: port, receiveTimeout: 4)
                defer { close(fd) }
                let request = Array("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8)
                _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
                var received: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                    if count == 0 { return String(decoding: received, as: UTF8.self) }  // closed by the server
                    guard count > 0 else { throw TestFailure("no close: recv failed with errno \(errno) after \(received.count) bytes") }
                    received += buffer[0..<count]
                }
            }
            #expect(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(answer)")
            #expect(answer.contains("Connection: close\r\n"))
            #expect(answer.hasSuffix("this port speaks TLS: use https:// or wss://\n"))
        }
    }

    @Test func aBrokenHandshakeIsClosedPromptly() async throws {
        let pki = try TestPKI()
        let files = try pki.issueServerCertificate(ca: pki.makeCA("one"), name: "server")
        try await TestServer.with({ $0.tls = files }) { server in
            let port = server.port
            // A handshake record whose body is not a ClientHello.
            let closed = try await withTimeout(5, "the server to close a broken handshake") {
                let fd = try connectLoopback(port: port, receiveTimeout: 4)
                defer { close(fd) }
                let record: [UInt8] = [0x16, 0x03, 0x01, 0x00, 0x08, 0xFF, 0, 0, 4, 1, 2, 3, 4]
                _ = record.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                    if count == 0 || (count < 0 && errno == ECONNRESET) { return true }  // an alert, then the close
                    if count < 0 { return false }  // the receive timeout: still open
                }
            }
            #expect(closed)
            let healthy = try await pki.curl([], port: port, path: "/healthz", trusting: "one")
            #expect(healthy.output.hasSuffix("200"), "\(healthy.output)")
        }
    }

    @Test func reloadSwapsTheCertificateForNewConnectionsOnly() async throws {
        let pki = try TestPKI()
        let files = try pki.issueServerCertificate(ca: pki.makeCA("one"), name: "server")
        try await TestServer.with({ $0.tls = files }) { server in
            let before = try await TestClient.connect(port: server.port, query: "user=old", tls: try pki.clientConfiguration(trusting: "one"))
            _ = try await before.next(type: "welcome")
            try await before.send(#"{"type":"join","room":"r","id":1}"#)
            _ = try await before.next(type: "joined")

            // A certificate from another CA in the same files, as a renewal would leave them.
            let renewed = try pki.issueServerCertificate(ca: pki.makeCA("two"), name: "renewed")
            try pki.replace(files, with: renewed)
            #expect(server.node.reloadCertificates())

            let published = try await pki.curl(
                ["-X", "POST", "--data", #"{"data":"after reload"}"#], port: server.port, path: "/api/rooms/r/publish", trusting: "two")
            #expect(published.status == 0 && published.output.hasSuffix("202"), "new connections present the new certificate: \(published.output)")
            let message = try await before.next(type: "message")
            #expect(message["data"] as? String == "after reload", "the connection opened before the reload still receives")
            let oldCA = try await pki.curl([], port: server.port, path: "/healthz", trusting: "one")
            #expect(oldCA.status == 60, "a client trusting only the old CA fails now: \(oldCA.output)")
            let swiftClient = try await TestClient.connect(port: server.port, query: "user=new", tls: try pki.clientConfiguration(trusting: "two"))
            _ = try await swiftClient.next(type: "welcome")
            await swiftClient.close()

            // A broken file keeps the certificate in use.
            try Data("not a certificate".utf8).write(to: URL(fileURLWithPath: files.certificateChain))
            #expect(!server.node.reloadCertificates())
            let still = try await pki.curl([], port: server.port, path: "/healthz", trusting: "two")
            #expect(still.output.hasSuffix("200"), "\(still.output)")
            await before.close()
        }
    }

    @Test func badFilesFailAtStartUpNamingTheFile() async throws {
        let pki = try TestPKI()
        let files = try pki.issueServerCertificate(ca: pki.makeCA("one"), name: "server")
        let other = try pki.issueServerCertificate(ca: pki.makeCA("two"), name: "other")
        let garbage = pki.directory.appendingPathComponent("garbage.pem").path
        try Data("hello".utf8).write(to: URL(fileURLWithPath: garbage))
        let missing = pki.directory.appendingPathComponent("missing.pem").path
        for (tls, expected) in [
            (TLSCertificateFiles(certificateChain: missing, privateKey: files.privateKey), "--tls-cert \(missing): cannot read it: no such file"),
            (TLSCertificateFiles(certificateChain: files.certificateChain, privateKey: missing), "--tls-key \(missing): cannot read it"),
            (TLSCertificateFiles(certificateChain: garbage, privateKey: files.privateKey), "--tls-cert \(garbage)"),
            (TLSCertificateFiles(certificateChain: files.certificateChain, privateKey: garbage), "--tls-key \(garbage): not a PEM private key"),
            (TLSCertificateFiles(certificateChain: files.certificateChain, privateKey: other.privateKey), "does not fit --tls-cert"),
        ] {
            var configuration = HeraldConfiguration()
            configuration.port = 0
            configuration.tls = tls
            do {
                _ = try await HeraldServer(configuration: configuration, logger: TestServer.logger)
                Issue.record("\(tls) was accepted")
            } catch {
                #expect(error.description.contains(expected), "\(error.description)")
            }
        }
    }

    @Test func commandLineNeedsBothFlags() async throws {
        let pki = try TestPKI()
        let files = try pki.issueServerCertificate(ca: pki.makeCA("one"), name: "server")
        let onlyCert = try await runHerald(["serve", "--port", "0", "--tls-cert", files.certificateChain])
        #expect(onlyCert.status == 64)
        #expect(onlyCert.output.contains("--tls-cert needs --tls-key"), "\(onlyCert.output)")
        let onlyKey = try await runHerald(["serve", "--port", "0"], environment: ["HERALD_TLS_KEY": files.privateKey])
        #expect(onlyKey.status == 64)
        #expect(onlyKey.output.contains("--tls-key needs --tls-cert"), "\(onlyKey.output)")
        let missing = pki.directory.appendingPathComponent("nope.pem").path
        let unreadable = try await runHerald(["serve", "--port", "0", "--tls-cert", missing, "--tls-key", files.privateKey])
        #expect(unreadable.status == 64)
        #expect(unreadable.output.contains("--tls-cert \(missing): cannot read it: no such file"), "\(unreadable.output)")
    }
}

/// A throw-away certificate authority or two, and server certificates they sign, made with the
/// `openssl` CLI in a temporary directory (removed when the process ends: left to the OS).
struct TestPKI {
    let directory: URL

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    func caPath(_ name: String) -> String { directory.appendingPathComponent("ca-\(name).pem").path }
    private func caKeyPath(_ name: String) -> String { directory.appendingPathComponent("ca-\(name).key").path }

    /// Makes the CA `name`; returns its name.
    func makeCA(_ name: String) throws -> String {
        try openssl([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", caKeyPath(name), "-out", caPath(name), "-days", "2", "-subj", "/CN=Herald test CA \(name)",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ])
        return name
    }

    /// A certificate for 127.0.0.1 and localhost signed by `ca`; its file holds the chain (leaf, then the CA).
    func issueServerCertificate(ca: String, name: String) throws -> TLSCertificateFiles {
        let key = directory.appendingPathComponent("\(name).key").path
        let request = directory.appendingPathComponent("\(name).csr").path
        let leaf = directory.appendingPathComponent("\(name)-leaf.pem").path
        let chain = directory.appendingPathComponent("\(name).pem").path
        let extensions = directory.appendingPathComponent("\(name).ext")
        try Data("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n".utf8)
            .write(to: extensions)
        try openssl([
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", request, "-subj", "/CN=localhost",
        ])
        try openssl([
            "x509", "-req", "-in", request, "-CA", caPath(ca), "-CAkey", caKeyPath(ca), "-CAcreateserial",
            "-out", leaf, "-days", "2", "-extfile", extensions.path,
        ])
        try Data(try Data(contentsOf: URL(fileURLWithPath: leaf)) + Data(contentsOf: URL(fileURLWithPath: caPath(ca)))).write(to: URL(fileURLWithPath: chain))
        return TLSCertificateFiles(certificateChain: chain, privateKey: key)
    }

    /// Overwrites `files` with the contents of `new` (what renewing a certificate in place does).
    func replace(_ files: TLSCertificateFiles, with new: TLSCertificateFiles) throws {
        try Data(contentsOf: URL(fileURLWithPath: new.certificateChain)).write(to: URL(fileURLWithPath: files.certificateChain))
        try Data(contentsOf: URL(fileURLWithPath: new.privateKey)).write(to: URL(fileURLWithPath: files.privateKey))
    }

    /// A NIOSSL client configuration that trusts only the CA `name`.
    func clientConfiguration(trusting name: String) throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caPath(name)))
        return configuration
    }

    /// curl to https://127.0.0.1:PORT/PATH trusting only the CA `name` (none: the system's);
    /// the output ends with the HTTP status. curl's exit status 60 is a certificate it could not verify.
    func curl(_ arguments: [String], port: Int, path: String, trusting name: String?) async throws -> (status: Int32, output: String) {
        let trust = name.map { ["--cacert", caPath($0)] } ?? []
        return try await runTool(
            "/usr/bin/curl", ["-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}"] + trust + arguments + ["https://127.0.0.1:\(port)\(path)"])
    }

    private func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestFailure("openssl \(arguments.joined(separator: " ")) failed: \(text)") }
    }
}

/// Runs a tool to its end (killed after `seconds`); returns its exit status and its output
/// (stdout and stderr together).
func runTool(_ path: String, _ arguments: [String], seconds: Int = 30) async throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let output = FileManager.default.temporaryDirectory.appendingPathComponent("herald-tool-\(UUID().uuidString).log")
    _ = FileManager.default.createFile(atPath: output.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: output) }
    let handle = try FileHandle(forWritingTo: output)
    process.standardOutput = handle
    process.standardError = handle
    let (ended, endedContinuation) = AsyncStream<Void>.makeStream()
    process.terminationHandler = { _ in endedContinuation.finish() }
    try process.run()
    do {
        try await withTimeout(Double(seconds), "\(path) \(arguments.prefix(3).joined(separator: " "))") {
            for await _ in ended {}
        }
    } catch {
        kill(process.processIdentifier, SIGKILL)
        throw error
    }
    try handle.close()
    return (process.terminationStatus, (try? String(contentsOf: output, encoding: .utf8)) ?? "")
}
