"""Build driver only: CMake owns the compiler flags (see CMakeLists.txt).

`pip install -e .` (or `pip install .`) configures and builds `lth_sparse._C` with CMake.
Set LTH_SPARSE_NATIVE=0 to build without -march=native (portable binaries).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "lth_sparse" / "_version.py").read_text()).group(1)


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        native = "OFF" if os.environ.get("LTH_SPARSE_NATIVE", "1") == "0" else "ON"
        cfg = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DLTH_SPARSE_VERSION={VERSION}",
            f"-DLTH_SPARSE_NATIVE={native}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        subprocess.run(["cmake", str(ROOT), *cfg], cwd=build_temp, check=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_temp, check=True)


setup(
    version=VERSION,
    ext_modules=[CMakeExtension("lth_sparse._C")],
    cmdclass={"build_ext": CMakeBuild},
)
