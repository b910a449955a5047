public import NIOCore

/// A command as Redis expects it: an array of bulk strings.
public struct RESPCommand: Sendable, Equatable {
    public var arguments: [ByteBuffer]

    public init(_ name: String, _ arguments: String...) {
        self.arguments = [ByteBuffer(string: name)] + arguments.map { ByteBuffer(string: $0) }
    }

    public init(_ name: String, _ arguments: [String]) {
        self.arguments = [ByteBuffer(string: name)] + arguments.map { ByteBuffer(string: $0) }
    }

    public init(arguments: [ByteBuffer]) {
        self.arguments = arguments
    }

    /// Appends the command's RESP encoding to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeString("*\(arguments.count)\r\n")
        for argument in arguments {
            buffer.writeString("$\(argument.readableBytes)\r\n")
            var argument = argument
            buffer.writeBuffer(&argument)
            buffer.writeStaticString("\r\n")
        }
    }
}
