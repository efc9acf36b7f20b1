import Synchronization

/// Whether the gateway should receive traffic, as a small registry of named components.
///
/// Each part that readiness depends on registers a component and moves it between ready and not
/// ready: the listeners (ready once bound), the drain (not ready once graceful shutdown starts), and
/// later storage and the bridge. The gateway is ready when at least one component is registered and
/// every one is ready. `GET /readyz` lists them all.
public final class ReadinessRegistry: Sendable {
    /// The state of one component.
    public enum State: Sendable, Hashable {
        case ready
        /// Not ready, with a short reason for operators (`"starting"`, `"draining"`, `"unreachable"`).
        case notReady(String)

        /// Whether this is ``ready``.
        public var isReady: Bool {
            if case .ready = self { return true }
            return false
        }
    }

    /// A named component and its state.
    public struct Component: Sendable, Hashable {
        public var name: String
        public var state: State
    }

    /// Components in registration order.
    private let components = Mutex<[Component]>([])

    public init() {}

    /// Sets the state of component `name`, registering it on first use.
    public func set(_ name: String, _ state: State) {
        components.withLock { components in
            if let index = components.firstIndex(where: { $0.name == name }) {
                components[index].state = state
            } else {
                components.append(Component(name: name, state: state))
            }
        }
    }

    /// Every component and its state, in registration order.
    public var snapshot: [Component] { components.withLock { $0 } }

    /// True when at least one component is registered and all of them are ready.
    public var isReady: Bool {
        components.withLock { !$0.isEmpty && $0.allSatisfy(\.state.isReady) }
    }
}
