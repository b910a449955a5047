public import NIOCore

extension ByteBuffer {
    /// Appends `string` as a JSON string literal (quotes included), escaping what JSON requires.
    @inlinable
    public mutating func writeJSONString(_ string: String) {
        writeInteger(UInt8(ascii: "\""))
        var pendingStart = string.utf8.startIndex
        var index = pendingStart
        let utf8 = string.utf8
        while index != utf8.endIndex {
            let byte = utf8[index]
            if byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
                writeBytes(utf8[pendingStart..<index])
                switch byte {
                case UInt8(ascii: "\""): writeStaticString("\\\"")
                case UInt8(ascii: "\\"): writeStaticString("\\\\")
                case 0x0A: writeStaticString("\\n")
                case 0x0D: writeStaticString("\\r")
                case 0x09: writeStaticString("\\t")
                default:
                    writeStaticString("\\u00")
                    let hex: [UInt8] = Array("0123456789abcdef".utf8)
                    writeInteger(hex[Int(byte >> 4)])
                    writeInteger(hex[Int(byte & 0x0F)])
                }
                pendingStart = utf8.index(after: index)
            }
            index = utf8.index(after: index)
        }
        writeBytes(utf8[pendingStart..<index])
        writeInteger(UInt8(ascii: "\""))
    }

    /// Appends a JSON array of strings.
    public mutating func writeJSONStringArray<S: Sequence<String>>(_ strings: S) {
        writeInteger(UInt8(ascii: "["))
        var first = true
        for string in strings {
            if !first { writeInteger(UInt8(ascii: ",")) }
            first = false
            writeJSONString(string)
        }
        writeInteger(UInt8(ascii: "]"))
    }
}
