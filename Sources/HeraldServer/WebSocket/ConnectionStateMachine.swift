import HeraldWire

/// The protocol logic of one client WebSocket, as a value that takes events and returns
/// actions (the shape of swift-nio's and swift-websocket's state machines): it decides, the
/// channel handler (``WebSocketConnection``) does. Tested without sockets.
///
/// ```
/// starting ──set up──▶ open ──close / client's close / violation / FIN──▶ closing ──▶ closed
///     └──refused (401, limits, setup failure)──▶ closing
/// ```
/// - `starting`: upgraded; the connection is being registered and its user's channels made
///   live. Frames that arrive wait in the parser; nothing but a close is written.
/// - `open`: the welcome was sent; frames are handled and deliveries written.
/// - `closing`: a close frame went out (ours, or our echo of the client's) or the client broke
///   the protocol; only the client's close frame is still of interest, and the close timeout
///   drops a peer that never answers.
/// - `closed`: the channel is gone.
struct ConnectionStateMachine {
    enum State: Equatable {
        case starting, open, closing, closed
    }

    /// What the handler must do about closing.
    enum CloseAction: Equatable {
        case none
        /// Write a close frame with this code and reason, flush it, and arm the close timeout:
        /// the client's close frame (or the timeout) ends the connection.
        case sendClose(CloseCode, reason: String)
        /// Echo the client's close code (RFC 6455 5.5.1), close the channel once it is written,
        /// and arm the close timeout.
        case echoClose(code: UInt16?)
        /// The client broke the protocol (RFC 6455 7.1.7): write a close frame, shut our output
        /// once it is written, drop what the client sends until it closes, arm the close timeout.
        case failConnection(CloseCode, reason: String)
        /// Close the channel now.
        case closeChannel
        /// Write out what is queued, then close the channel (the client half-closed and every
        /// frame it sent was answered).
        case flushThenCloseChannel
    }

    /// What the handler must do with a frame the parser produced.
    enum FrameAction: Equatable {
        /// Handle it (a text, binary or ping frame on an open connection).
        case handle
        /// Drop it (the connection is not open, or it is a pong: liveness is noted anyway).
        case ignore
        /// The client's close frame.
        case close(CloseAction)
    }

    private(set) var state = State.starting
    /// The code of the close frame this side sent, if any.
    private(set) var closeCode: CloseCode?
    /// Why the connection ends, for the log.
    private(set) var closeReason = ""
    /// The client half-closed (FIN): nothing more will be read.
    private(set) var inputEnded = false
    /// The client broke the protocol: what it sends is dropped until it closes.
    private(set) var discardingInput = false

    /// Whether replies and deliveries may be written.
    var isOpen: Bool { state == .open }

    /// Whether the parser's next frame should be read now: on an open connection with no roster
    /// command waiting (later frames wait their turn), and while closing (for the client's close).
    func readsFrames(commandInFlight: Bool) -> Bool {
        (state == .open && !commandInFlight) || state == .closing
    }

    /// Whether bytes read from the socket are parsed at all.
    var parsesInput: Bool { state != .closed && !discardingInput }

    /// The connection was set up (registered, its channels live): the welcome goes out.
    /// Returns `false` when it ended meanwhile (nothing is to be sent).
    mutating func setUp() -> Bool {
        guard state == .starting else { return false }
        state = .open
        return true
    }

    /// This side closes: refused credentials or limits, a failed setup, a slow consumer, a
    /// heartbeat timeout, rate abuse, shutdown.
    mutating func close(_ code: CloseCode, reason: String) -> CloseAction {
        guard state == .open || state == .starting else { return .none }
        state = .closing
        closeCode = code
        closeReason = reason
        return .sendClose(code, reason: reason)
    }

    /// A frame arrived.
    mutating func received(_ frame: WebSocketFrameParser.Frame) -> FrameAction {
        switch frame {
        case .text, .binary, .ping:
            return state == .open ? .handle : .ignore
        case .pong:
            return .ignore
        case .close(let code):
            switch state {
            case .open:
                closeReason = "closed by client" + (code.map { " (\($0))" } ?? "")
                state = .closing
                return .close(.echoClose(code: code))
            case .closing:
                return .close(.closeChannel)  // the client answered our close frame
            case .starting, .closed:
                return .ignore
            }
        }
    }

    /// The parser found a protocol violation.
    mutating func violated(_ violation: WebSocketViolation) -> CloseAction {
        guard state != .closed, !discardingInput else { return .none }
        discardingInput = true
        guard state != .closing else { return .closeChannel }
        state = .closing
        closeCode = violation.code
        closeReason = violation.reason
        return .failConnection(violation.code, reason: violation.reason)
    }

    /// The client sent FIN.
    mutating func inputClosed(commandInFlight: Bool) -> CloseAction {
        inputEnded = true
        if closeReason.isEmpty { closeReason = "the client closed its side of the connection" }
        if state == .closing { return .closeChannel }
        return closeIfInputEnded(commandInFlight: commandInFlight)
    }

    /// After the client's FIN, once everything it sent was handled: replies written, then close.
    mutating func closeIfInputEnded(commandInFlight: Bool) -> CloseAction {
        guard inputEnded, !commandInFlight, state == .open else { return .none }
        state = .closing
        return .flushThenCloseChannel
    }

    /// An I/O error: the connection is gone.
    mutating func failed(_ error: any Error) -> CloseAction {
        if closeReason.isEmpty { closeReason = "error: \(error)" }
        return .closeChannel
    }

    /// The close timeout passed.
    func closeTimeoutPassed() -> CloseAction {
        state == .closed ? .none : .closeChannel
    }

    /// The channel closed.
    mutating func closed() {
        state = .closed
    }
}
