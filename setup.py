"""The optional compiled kernel (csrc/softmax_values.c, issue #22): built by ``pip install .`` where a C compiler
is present, skipped with a warning where it is not (``optional=True``; stabilitylab then runs its numpy path,
the same results bit for bit).  Everything else is in pyproject.toml."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """Adds gcc/clang flags that keep the arithmetic IEEE round-to-nearest (no contraction into FMA, no fast-math)
    there; ``-fno-trapping-math`` (after ``-fno-fast-math``, which would turn trapping back on) only lets the
    compiler compute both sides of a select, which changes no value, so that the loops vectorize."""

    def build_extensions(self):
        if self.compiler.compiler_type == "unix":
            for ext in self.extensions:
                ext.extra_compile_args += ["-fno-fast-math", "-ffp-contract=off", "-fno-trapping-math"]
        super().build_extensions()


setup(ext_modules=[Extension("_stabilitylab_kernels", ["csrc/softmax_values.c"], optional=True)],
      cmdclass={"build_ext": BuildExt})
