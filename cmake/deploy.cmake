# `make test`: tests/deploy (pytest + Debian's grpcio and python3-yaml): deploy/Dockerfile's steps
# run as the scripts they are (deploy/image: the build context, install-cuda.sh, build.sh on this
# build tree, stage.sh, the staged binary serving the fixture with only its staged libraries),
# the Kubernetes overlays rendered by `kubectl kustomize` and checked (skipped where kubectl is
# missing), and the client settings of docs/CLIENTS.md against real servers (docs/DEPLOY.md).
# Included by the top-level CMakeLists.txt after server.cmake.
add_test(NAME deploy
         COMMAND /usr/bin/python3 -m pytest -q -rs -p no:cacheprovider tests/deploy
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
# VT_IMAGE_BUILD=1: run deploy/image/build.sh on this build tree (after `make build` it has
# nothing to rebuild; run alone, pytest skips that test rather than rebuild a shared tree)
set_tests_properties(deploy PROPERTIES FIXTURES_REQUIRED fixture TIMEOUT 600
                     ENVIRONMENT "VT_BUILD=${CMAKE_BINARY_DIR};VT_FIXTURE=${CMAKE_BINARY_DIR}/fixture;VT_IMAGE_BUILD=1")
