import HeraldWire
import NIOCore
import Testing

@testable import HeraldServer

/// The WebSocket connection's protocol logic, without sockets: every path from upgrade to close.
@Suite struct ConnectionStateMachineTests {
    @Test func aConnectionOpensOnceSetUpAndOnlyThenHandlesFrames() {
        var machine = ConnectionStateMachine()
        #expect(machine.state == .starting && !machine.isOpen)
        #expect(machine.received(.text(ByteBuffer(string: "{}"))) == .ignore, "frames before the welcome wait (the parser keeps them)")
        #expect(!machine.readsFrames(commandInFlight: false))
        let opened = machine.setUp()
        #expect(opened)
        #expect(machine.isOpen && machine.readsFrames(commandInFlight: false))
        #expect(!machine.readsFrames(commandInFlight: true), "a roster command in flight holds later frames back")
        #expect(machine.received(.text(ByteBuffer(string: "{}"))) == .handle)
        #expect(machine.received(.binary(ByteBuffer())) == .handle)
        #expect(machine.received(.ping(ByteBuffer())) == .handle)
        #expect(machine.received(.pong) == .ignore)
        let openedTwice = machine.setUp()
        #expect(!openedTwice, "set up once")
    }

    @Test func aRefusedConnectionIsClosedWithItsCodeBeforeItOpens() {
        var machine = ConnectionStateMachine()
        #expect(machine.close(.unauthorized, reason: "token expired") == .sendClose(.unauthorized, reason: "token expired"))
        #expect(machine.state == .closing && machine.closeCode == .unauthorized)
        let opened = machine.setUp()
        #expect(!opened, "a setup finishing after the refusal sends no welcome")
        #expect(machine.readsFrames(commandInFlight: false), "the client's close frame is still read")
        #expect(machine.received(.close(code: 1000)) == .close(.closeChannel))
        #expect(machine.close(.normal, reason: "again") == .none, "closed once")
    }

    @Test func theClientsCloseIsEchoedAndItsAnswerToOursEndsTheConnection() {
        var machine = ConnectionStateMachine()
        _ = machine.setUp()
        #expect(machine.received(.close(code: 1001)) == .close(.echoClose(code: 1001)))
        #expect(machine.state == .closing && machine.closeReason == "closed by client (1001)")
        #expect(machine.received(.text(ByteBuffer(string: "{}"))) == .ignore, "nothing is handled after a close")

        var ours = ConnectionStateMachine()
        _ = ours.setUp()
        #expect(ours.close(.slowConsumer, reason: "slow consumer") == .sendClose(.slowConsumer, reason: "slow consumer"))
        #expect(!ours.isOpen, "no more deliveries once closing")
        #expect(ours.received(.close(code: 1013)) == .close(.closeChannel))
        #expect(ours.closeTimeoutPassed() == .closeChannel, "a peer that never answers is dropped")
        ours.closed()
        #expect(ours.closeTimeoutPassed() == .none && !ours.parsesInput)
    }

    @Test func aViolationFailsTheConnectionOnceAndDropsWhatFollows() {
        var machine = ConnectionStateMachine()
        _ = machine.setUp()
        let violation = WebSocketViolation(.frameTooLarge, "message larger than 65536 bytes")
        #expect(machine.violated(violation) == .failConnection(.frameTooLarge, reason: "message larger than 65536 bytes"))
        #expect(machine.closeCode == .frameTooLarge && !machine.parsesInput)
        #expect(machine.violated(WebSocketViolation(.protocolError, "again")) == .none)

        var closing = ConnectionStateMachine()
        _ = closing.setUp()
        _ = closing.close(.serviceRestart, reason: "server shutting down")
        #expect(closing.violated(violation) == .closeChannel, "a violation while closing just ends it")
        #expect(closing.closeCode == .serviceRestart)
    }

    @Test func aHalfClosedClientIsAnsweredThenClosed() {
        var machine = ConnectionStateMachine()
        _ = machine.setUp()
        #expect(machine.inputClosed(commandInFlight: true) == .none, "a join waiting for the roster is answered first")
        #expect(machine.isOpen && machine.inputEnded)
        #expect(machine.closeIfInputEnded(commandInFlight: false) == .flushThenCloseChannel)
        #expect(machine.state == .closing && machine.closeReason == "the client closed its side of the connection")

        var closing = ConnectionStateMachine()
        _ = closing.setUp()
        _ = closing.close(.heartbeatTimeout, reason: "heartbeat timeout")
        #expect(closing.inputClosed(commandInFlight: false) == .closeChannel)
        #expect(closing.closeReason == "heartbeat timeout", "the first reason stays")
    }
}
