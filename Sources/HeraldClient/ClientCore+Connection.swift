import HTTPTypes
import HeraldWire
import HummingbirdWSClient
import Logging
import NIOCore
import NIOWebSocket

/// Connecting, reconnecting, and the run loop.
extension ClientCore {
    /// Close codes after which reconnecting with the same credentials cannot help.
    static let fatalCloseCodes: Set<UInt16> = [1002, 1007, 1008, 4001, 4003]

    enum Outcome: Sendable {
        case retry(after: Duration)
        case stop(HeraldClientError)
    }

    /// Marks the client as running; `false` if it already ran.
    func start() -> Bool {
        locked { state, _ in
            guard !state.started else { return false }
            state.started = true
            return true
        }
    }

    /// The connections, the timers and the background jobs, until cancelled or stopped by a
    /// fatal close; returns the error of a fatal close.
    func runAll() async -> HeraldClientError? {
        enum Finished: Sendable { case connections(HeraldClientError?), helper }
        let (jobs, jobsContinuation) = AsyncStream<Job>.makeStream(bufferingPolicy: .bufferingNewest(4))
        locked { state, _ in state.jobs = jobsContinuation }
        return await withTaskGroup(of: Finished.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(50))
                    self.tick()
                }
                return .helper
            }
            group.addTask {
                for await job in jobs {
                    switch job {
                    case .refreshToken: await self.refreshToken()
                    }
                }
                return .helper
            }
            group.addTask { .connections(await self.runConnections()) }
            var result: HeraldClientError?
            while let finished = await group.next() {
                if case .connections(let error) = finished {
                    result = error
                    break
                }
            }
            group.cancelAll()
            jobsContinuation.finish()
            return result
        }
    }

    /// Ends the client: pending requests fail, streams finish, `stopped` is the last event.
    func shutdown(_ error: HeraldClientError?) {
        locked { state, effects in
            state.phase = .closed
            state.link?.outbox.finish()
            state.link = nil
            state.jobs?.finish()
            state.jobs = nil
            failAll(error ?? .closed("the client stopped"), &state, &effects)
            emit(.stopped(error), &effects)
            let streams = [messages] + state.rooms.values.map(\.stream)
            let events = self.events
            effects.append {
                for stream in streams { stream.finish() }
                events.finish()
            }
        }
    }

    /// Connects, reads until the connection ends, waits, and again, failing over across the URLs.
    func runConnections() async -> HeraldClientError? {
        var urlIndex = -1
        while !Task.isCancelled {
            urlIndex = (urlIndex + 1) % urls.count
            var token: String?
            switch credentials {
            case .user: break
            case .token(let fixed): token = fixed
            case .tokenProvider(let provider):
                do {
                    token = try await provider()
                } catch {
                    if Task.isCancelled { return nil }
                    events.yield(.error(.token("the token provider failed, no connection attempted: \(error)")))
                    guard case .retry(let delay) = retry(closeCode: nil, reason: "token provider failed") else { return nil }
                    do { try await Task.sleep(for: delay) } catch { return nil }
                    continue
                }
            }
            let base = configuration.connectURLHook?(urls[urlIndex]) ?? urls[urlIndex]
            let url = connectURL(base, token: token)
            guard let attempt = beginConnecting(url: urls[urlIndex]) else { return nil }
            let (generation, outbox) = attempt
            let (code, reason) = await connect(url: url, token: token, generation: generation, outbox: outbox)
            if Task.isCancelled { return nil }
            switch connectionEnded(generation: generation, closeCode: code, reason: reason) {
            case .stop(let error): return error
            case .retry(let delay):
                do { try await Task.sleep(for: delay) } catch { return nil }
            }
        }
        return nil
    }

    /// The URL with `?user=` (development mode) and the user channel's position to resume from.
    /// A token goes in the `Authorization` header, where proxies do not log it.
    func connectURL(_ base: String, token: String?) -> String {
        var parameters: [(String, String)] = []
        if case .user(let user) = credentials { parameters.append(("user", user)) }
        if let position = locked({ state, _ in state.positions.resume(.user) }) {
            parameters.append(("since_offset", String(position.offset)))
            parameters.append(("since_epoch", position.epoch))
        } else {
            // No position yet: the welcome says where the user channel stands, so direct
            // messages sent while away before the first one are recovered too.
            parameters.append(("since", "latest"))
        }
        if configuration.presenceEvents { parameters.append(("presence_events", "true")) }
        guard !parameters.isEmpty else { return base }
        let query = parameters.map { "\($0)=\(Self.percentEncoded($1))" }.joined(separator: "&")
        return base + (base.contains("?") ? "&" : "?") + query
    }

    static func percentEncoded(_ value: String) -> String {
        var encoded = ""
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                encoded.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = Array("0123456789ABCDEF".unicodeScalars)
                encoded.unicodeScalars.append("%")
                encoded.unicodeScalars.append(hex[Int(byte >> 4)])
                encoded.unicodeScalars.append(hex[Int(byte & 0x0F)])
            }
        }
        return encoded
    }

    /// A new connection attempt; `nil` once the client stopped.
    func beginConnecting(url: String) -> (UInt64, AsyncStream<String>)? {
        locked { state, effects in
            guard state.phase != .closed else { return nil }
            let (outbox, continuation) = AsyncStream<String>.makeStream()
            state.generation += 1
            state.link = Link(generation: state.generation, outbox: continuation, connectDeadline: .now + configuration.connectTimeout)
            state.phase = .connecting
            state.welcome = nil
            state.statistics.connectAttempts += 1
            emit(.connecting(url: url, attempt: state.attempt), &effects)
            return (state.generation, outbox)
        }
    }

    /// One WebSocket connection: a writer draining the outbox, a reader handing frames to the
    /// state machine. Returns the close code (`nil`: no close frame) and reason.
    func connect(url: String, token: String?, generation: UInt64, outbox: AsyncStream<String>) async -> (UInt16?, String) {
        var settings = WebSocketClientConfiguration(maxFrameSize: configuration.maxFrameSize, closeTimeout: .seconds(1))
        if let token { settings.additionalHeaders[.authorization] = "Bearer \(token)" }
        let maxFrameSize = configuration.maxFrameSize
        do {
            let closeFrame = try await WebSocketClient.connect(url: url, configuration: settings, logger: configuration.logger) { inbound, outbound, _ in
                await withTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for await text in outbox {
                            do { try await outbound.write(.text(text)) } catch { return }
                        }
                        // The outbox ends when the client gives up on the connection or stops.
                        let (code, reason) = self.localClose(generation) ?? (1000, "client closed")
                        try? await outbound.close(WebSocketErrorCode(codeNumber: Int(code)), reason: reason)
                    }
                    group.addTask {
                        do {
                            for try await message in inbound.messages(maxSize: maxFrameSize) {
                                switch message {
                                case .text(let text): self.receive(text, generation: generation)
                                case .binary: self.receiveBinary(generation: generation)
                                }
                            }
                        } catch {
                            self.configuration.logger.debug("herald client connection read failed", metadata: ["error": "\(error)"])
                        }
                    }
                    await group.next()
                    group.cancelAll()
                }
            }
            return (closeFrame.map { UInt16(webSocketErrorCode: $0.closeCode) }, closeFrame?.reason ?? "")
        } catch {
            return (nil, "connection failed: \(error)")
        }
    }

    func localClose(_ generation: UInt64) -> (UInt16, String)? {
        locked { state, _ in
            guard let link = state.link, link.generation == generation, let close = link.localClose else { return nil }
            return (close.code, close.reason)
        }
    }

    /// The connection is gone: requeue or fail its requests, then stop or pick the delay.
    func connectionEnded(generation: UInt64, closeCode: UInt16?, reason: String) -> Outcome {
        let (close, wasConnected): ((UInt16?, String), Bool) = locked { state, effects in
            let local = state.link?.generation == generation ? state.link?.localClose : nil
            state.link?.outbox.finish()
            state.link = nil
            state.ping = nil
            state.refreshAt = nil
            state.resuming = []
            let wasConnected = state.phase == .connected
            state.welcome = nil
            if state.phase != .closed { state.phase = .disconnected }
            requeueInFlight(&state, &effects)
            return (local.map { ($0.code, $0.reason) } ?? (closeCode, reason), wasConnected)
        }
        configuration.logger.debug(
            "herald client disconnected", metadata: ["code": "\(close.0.map(String.init) ?? "none")", "reason": "\(close.1)", "welcomed": "\(wasConnected)"])
        return retry(closeCode: close.0, reason: close.1)
    }

    /// Whether a close ends the client, else the delay before the next attempt. A 4001
    /// `token expired` is retried once when a token provider can give a fresh token.
    func retry(closeCode: UInt16?, reason: String) -> Outcome {
        locked { state, effects in
            if let code = closeCode, Self.fatalCloseCodes.contains(code) {
                let retriable = code == 4001 && reason.hasPrefix("token expired") && !state.authRetried
                if case .tokenProvider = credentials, retriable {
                    state.authRetried = true
                } else {
                    return .stop(.stopped(closeCode: code, reason: reason))
                }
            }
            let hint = closeCode == 1013 ? ReconnectDelay.hint(inCloseReason: reason, random: configuration.random) : nil
            let delay =
                hint
                ?? ReconnectDelay.backoff(
                    attempt: state.attempt, base: configuration.minReconnectDelay, cap: configuration.maxReconnectDelay, random: configuration.random)
            state.attempt += 1
            emit(.disconnected(closeCode: closeCode, reason: reason, retryIn: delay), &effects)
            return .retry(after: delay)
        }
    }
}
