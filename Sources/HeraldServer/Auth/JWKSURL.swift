import AsyncHTTPClient
import Foundation
public import JWTKit
import NIOCore
import NIOHTTP1

/// A JWKS published by an identity provider (`--jwks-url URL`), fetched with AsyncHTTPClient.
///
/// Fetched at start (a provider that is down then is not fatal), again on a token whose `kid`
/// no key has (at most once per ``TokenPolicy/keySetRefreshInterval``), and in the background
/// once the keys are older than ``TokenPolicy/keySetMaxAge`` (a key the provider withdrew stops
/// verifying). When the URL is down or answers garbage, the keys fetched before stay in use.
///
/// Every fetch is bounded: ``timeout`` for the whole request (head and body), ``maxBytes`` for
/// the body, and no redirect is followed. The URL must be `https`, except to a loopback address
/// (a JWKS fetched in clear text across a network could be replaced by anyone on the path).
public struct JWKSURL: TokenKeySet {
    public let url: URL
    public var timeout: TimeAmount = .seconds(5)
    /// The largest body read: a key set is a few kilobytes.
    public static let maxBytes = 1024 * 1024

    /// - Throws: ``ConfigurationError`` for a URL that is not `https` (or `http` to a loopback host).
    public init(_ text: String) throws(ConfigurationError) {
        guard let url = URL(string: text), let scheme = url.scheme?.lowercased(), let host = url.host, !host.isEmpty else {
            throw ConfigurationError(
                "--jwks-url \(Self.redacting(text)) is not a URL: give the identity provider's JWKS address, e.g. https://example.auth0.com/.well-known/jwks.json"
            )
        }
        guard scheme == "https" || (scheme == "http" && Self.isLoopback(host)) else {
            throw ConfigurationError(
                "--jwks-url \(Self.redacting(text)) must use https (http only to a loopback host): a JWKS fetched in clear text could be replaced on the way")
        }
        self.url = url
    }

    /// The URL as logs and errors name it: without credentials or a query (a provider's URL may
    /// carry a key in either), which are replaced by `***`.
    public var source: String { Self.redacting(url.absoluteString) }

    /// `text` with the `user:password@` of its authority and its query replaced by `***`.
    public static func redacting(_ text: String) -> String {
        var text = text
        if let query = text.firstIndex(of: "?") { text = String(text[..<query]) + "?***" }
        if let scheme = text.firstRange(of: "://") {
            let authorityEnd = text[scheme.upperBound...].firstIndex { $0 == "/" || $0 == "?" } ?? text.endIndex
            if let at = text[scheme.upperBound..<authorityEnd].lastIndex(of: "@") {
                text = String(text[..<scheme.upperBound]) + "***" + String(text[at...])
            }
        }
        return text
    }

    public func fetch() async throws -> JWKS {
        var request = HTTPClientRequest(url: url.absoluteString)
        request.headers.add(name: "Accept", value: "application/json, application/jwk-set+json")
        request.headers.add(name: "User-Agent", value: "herald")
        let (status, body) = try await BoundedHTTP.fetch(request, timeout: timeout, maxBytes: Self.maxBytes)
        guard status == .ok else {
            throw ConfigurationError("the JWKS URL answered \(status.code) \(status.reasonPhrase) (redirects are not followed: give the final URL)")
        }
        return try JWKSFile.decode(Data(body.readableBytesView))
    }

    /// `localhost`, `::1` or an IPv4 literal in 127.0.0.0/8 (not a name that merely starts
    /// with "127.").
    static func isLoopback(_ host: String) -> Bool {
        let host = host.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        if host == "localhost" || host == "::1" { return true }
        let octets = host.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil }
    }
}
