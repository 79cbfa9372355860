import Glibc

/// Loads a flavour's object and attaches its programs, for a probe's own object or for the
/// shared hook: one path, with the task-storage retry and the roll-back of a half-done attach.
struct ObjectAttacher: Sendable {
    let backend: any KernelBackend
    let reaper: Reaper

    struct Attached: Sendable {
        var object: any LoadedObject
        var links: [any AttachedLink]
        /// Whether entry timestamps ended up in task storage.
        var taskStorage: Bool
        var recipe: Recipe
    }

    /// Loads `descriptor`'s recipe for `input` and attaches its programs in order. A kernel
    /// that refuses task storage for the program type (EINVAL at load) gets the recipe again
    /// with a thread-id hash; an attach that fails part-way is rolled back through the
    /// reaper, links before the object.
    func attach(_ descriptor: FlavourDescriptor, _ input: RecipeInput) -> Result<Attached, AttachAttempt> {
        var input = input
        var recipe = descriptor.recipe(input)
        var object: (any LoadedObject)?
        var lastError: KernelError?
        for _ in 0..<2 where object == nil {
            do {
                object = try backend.load(recipe.load)
            } catch {
                lastError = error
                guard input.taskStorage, error.errno == .EINVAL else { break }
                input.taskStorage = false
                recipe = descriptor.recipe(input)
            }
        }
        guard let object else {
            let error = lastError ?? KernelError(stage: .load, errno: nil, operation: "load \(recipe.load.object)")
            return .failure(.failed(descriptor.flavour, recipe.attachments.first?.mechanism ?? descriptor.needs[0], error, facts: input.facts))
        }
        if let array = recipe.cgroupArray {
            do throws(KernelError) {
                let fd = try array.filter.openDirectory()
                defer { close(fd) }
                try object.update(array.map, index: 0, to: UInt32(bitPattern: fd))
            } catch {
                reaper.dispose(links: [], objects: [object])
                return .failure(.failed(descriptor.flavour, recipe.attachments.first?.mechanism ?? descriptor.needs[0], error, facts: input.facts))
            }
        }
        var links: [any AttachedLink] = []
        for step in recipe.attachments {
            do {
                links.append(try object.attach(program: step.program, to: step.point))
            } catch {
                reaper.dispose(links: links, objects: [object])
                return .failure(.failed(descriptor.flavour, step.mechanism, error, facts: input.facts))
            }
        }
        return .success(Attached(object: object, links: links, taskStorage: input.taskStorage, recipe: recipe))
    }
}
