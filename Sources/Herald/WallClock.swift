#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The wall clock, for timestamps clients read (a message's `"ts"`); never for deadlines, which
/// use NIO's monotonic `NIODeadline`.
public enum WallClock {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    public static func millisecondsSince1970() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}
