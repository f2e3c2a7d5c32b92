@echo off
rem One click on Windows: launch\start.bat [--keep-tensorboard] [key=value ...] [-- trainer key=value ...]
rem Same as "python -m launch up ..." under the trainer venv, from the repository root (runs\ lands there).
rem scripts/setup_envs.py is Linux-only: on Windows create the venvs yourself and name the sim-side
rem interpreter with interpreters.sim_python=C:\path\to\python.exe (see docs/launch.md).
setlocal
set "REPO=%~dp0.."
pushd "%REPO%"
set "PY=%CZB_TRAINER_PYTHON%"
if "%PY%"=="" set "PY=%REPO%\.venvs\trainer\Scripts\python.exe"
if not exist "%PY%" (
  echo start.bat: no trainer interpreter at %PY%: create the venv or set CZB_TRAINER_PYTHON 1>&2
  popd
  exit /b 2
)
set "PYTHONPATH=%REPO%"
"%PY%" -m launch up %*
set "CODE=%ERRORLEVEL%"
popd
exit /b %CODE%
