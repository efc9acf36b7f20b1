#if canImport(Glibc)
import Glibc
#endif

/// The little file-system work storage needs at start-up (before any event loop serves traffic).
enum FileSystem {
    struct Error: Swift.Error, CustomStringConvertible {
        var description: String
    }

    /// Creates `path` and its parents (mode 0750) when missing.
    static func createDirectory(_ path: String) throws {
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            prefix += component + "/"
            if mkdir(prefix, 0o750) != 0 && errno != EEXIST {
                throw Error(description: "cannot create directory \(prefix): \(String(cString: strerror(errno)))")
            }
        }
    }
}
