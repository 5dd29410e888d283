"""advbench: a plugin-based benchmark for detecting adversarial inputs to image classifiers."""

from advbench.hookspecs import hookimpl

__version__ = "0.1.0"

# The version of the contract between advbench and its plugins (advbench.api's names, the hooks, the shapes and
# rules in docs/PLUGINS.md), apart from the distribution's own version. MINOR goes up when the API gains something
# an existing plugin may ignore (a new optional class attribute, a RunContext helper, a hook); MAJOR goes up when
# an existing plugin could break (a name removed or renamed, a signature or a rule changed). A plugin declares the
# range it was written for (``requires_api = ">=1.0,<2"`` in its entry-point module, or ``plugin_api`` on a class);
# the registry skips, with one line on stderr, a plugin whose range excludes this version.
PLUGIN_API_VERSION = "1.2"  # 1.1: Component.batch_dependent, depends_on_batch(); 1.2: Detector.scores_from_forwards,
# score_forwards()

__all__ = ["PLUGIN_API_VERSION", "hookimpl", "__version__"]
