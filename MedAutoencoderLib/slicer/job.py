"""The Slicer module's jobs without Qt: detection and training of scene volumes in worker processes.

:class:`WorkerJobs` writes the volumes a job needs, starts the library's command line as a worker (the standby
detection worker when it is free) and returns a :class:`MedAutoencoderJob` that follows it. What needs the
running Slicer application is given to them: the process runner (``slicer.util.launchConsoleProcess``), the
timers of the main thread (:class:`EventLoop`), the temporary folder and the startup environment; tests pass
their own, as KitwareMedical/SlicerNNUnet's ``SegmentationLogic`` takes its ``process``. ``slicer`` is only
imported where the scene is read, lazily, so this module imports outside Slicer.

The job's attributes keep the camelCase names of the module's logic, which returns it to Slicer scripts.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from MedAutoencoderLib.config import ModelConfig, SegmentTrainConfig, TrainConfig
from MedAutoencoderLib.slicer import bridge
from MedAutoencoderLib.worker import jobs, standby

#: How long a training worker gets after Cancel to finish its step, calibrate the best model and save it before it
#: is killed (calibration runs the model over the held-out volumes: seconds to a minute on a CPU).
TRAINING_STOP_GRACE_MS = 120000
#: How often the main thread collects worker output.
POLL_INTERVAL_MS = 100

#: Starts a worker's command line: ``launch(command, useStartupEnvironment=..., updateEnvironment=...)``, as
#: ``slicer.util.launchConsoleProcess`` does; it returns a ``subprocess.Popen``.
Launcher = Callable[..., object]
#: Turns a message into the user's language (``slicer.i18n.tr``); messages stay English without one.
Translate = Callable[[str], str]


class EventLoop:
    """The main thread's timers, where Qt and MRML may be touched. The module gives Qt's; tests give their own.

    Without a subclass nothing runs by itself: :meth:`MedAutoencoderJob.poll` is then called by the owner.
    """

    def every(self, milliseconds: int, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` every ``milliseconds`` on the main thread until the returned function is called.

        Args:
            milliseconds: the interval.
            callback: what to call.

        Returns:
            A function that stops the calls.
        """
        return lambda: None

    def later(self, milliseconds: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, ``milliseconds`` from now, on the main thread.

        Args:
            milliseconds: the delay.
            callback: what to call.
        """

    def process_events(self) -> None:
        """Let the application handle its pending events (a script waits on a job without freezing Slicer)."""


@contextlib.contextmanager
def removed_on_failure(temporary_directory: str) -> Iterator[None]:
    """A job's folder removed when starting the job fails (a volume refused, the worker not started): it may
    already hold copies of the scene's volumes, which must not stay behind in Slicer's temporary folder.

    Args:
        temporary_directory: the job's folder.

    Raises:
        BaseException: whatever the block raised, after the folder is removed.
    """
    try:
        yield
    except BaseException:
        shutil.rmtree(temporary_directory, ignore_errors=True)
        raise


class MedAutoencoderJob:
    """A worker process of the library's CLI, followed from Slicer's main thread.

    ``MedAutoencoderLib.worker.jobs.WorkerJob`` (a process of its own) or
    ``MedAutoencoderLib.worker.standby.ServedJob`` (a detection sent to the standby worker) reads the worker's
    output on a thread; :meth:`poll`, called by the event loop's timer, moves the events to the main thread,
    turns the outputs into a result with ``finish`` when the worker succeeded, and always removes the job's
    temporary files.

    Args:
        worker: the followed worker (``WorkerJob`` or ``ServedJob``).
        finish: turns the worker's outputs (``None`` when cancelled) into the job's result.
        temporaryDirectory: the job's folder, removed when it ends.
        inputVolume: the detection's input node (``None`` for training).
        nodeNamesByFile: node name of each file written for the worker, to name nodes in its errors.
        loop: the main thread's timers.
        translate: translation of the job's own messages.
    """

    def __init__(self, worker, finish: Callable[[Optional[dict]], object], temporaryDirectory: str,
                 inputVolume=None, nodeNamesByFile: Optional[Dict[str, str]] = None,
                 loop: Optional[EventLoop] = None, translate: Translate = str) -> None:
        self.worker = worker
        self.inputVolume = inputVolume
        self._nodeNamesByFile = nodeNamesByFile or {}
        self.result = None
        self.error: Optional[str] = None
        self.done = False
        self.onEvent: Optional[Callable[[dict], None]] = None
        self.onFinished: Optional[Callable[[MedAutoencoderJob], None]] = None
        self._finish = finish
        self._temporaryDirectory = temporaryDirectory
        self._loop = loop or EventLoop()
        self._tr = translate
        self._stopPolling = self._loop.every(POLL_INTERVAL_MS, self.poll)

    @property
    def cancelled(self) -> bool:
        return self.worker.was_cancelled

    @property
    def recentOutput(self) -> str:
        return self.worker.recent_output()

    def poll(self) -> None:
        """Hand the worker's new events to ``onEvent``; when it has ended, complete the job."""
        if self.done:
            return
        finished = self.worker.finished  # read before draining so that no last line is missed
        for event in self.worker.poll_events():
            if self.onEvent:
                self.onEvent(event)
        if finished:
            self._complete()

    def _complete(self) -> None:
        self._stopPolling()
        self.done = True
        try:
            if self.worker.succeeded:
                self.result = self._finish(self.worker.outputs)
                if self.result is None:
                    self.error = self._tr("The worker process ended without reporting its outputs.")
            elif self.cancelled:
                self.result = self._finish(None)  # training keeps its last good checkpoint; detection nothing
            else:
                self.error = self._withNodeNames(self.worker.error_message) or self._tr(
                    "The worker process ended with exit code {code}.").format(code=self.worker.returncode)
        except Exception as error:  # reading the outputs failed: report it like a worker error
            logging.exception("MedAutoencoder: could not use the worker's outputs")
            self.error = str(error)
        finally:
            shutil.rmtree(self._temporaryDirectory, ignore_errors=True)
        if self.onFinished:
            self.onFinished(self)

    def _withNodeNames(self, message: Optional[str]) -> Optional[str]:
        """The worker names the temporary files it was given; the user knows the volumes by their node names."""
        for path, name in self._nodeNamesByFile.items():
            for spelling in {path, os.path.normpath(path)}:  # the worker prints paths with the system's separators
                message = message.replace(spelling, f"'{name}'") if message else message
        return message

    def cancel(self) -> None:
        """Ask the worker to stop; training gets time to save its checkpoint before the process tree is killed."""
        self.worker.request_stop()
        if self.worker.stop_file:
            self._loop.later(TRAINING_STOP_GRACE_MS, self.kill)
        else:
            self.kill()

    def kill(self) -> None:
        """Kill the worker's process tree (no-op when it has ended)."""
        self.worker.cancel()

    def discard(self) -> None:
        """Kill the worker and remove its temporary files now, without a result (Slicer is closing)."""
        self._stopPolling()
        self.kill()
        self.done = True
        shutil.rmtree(self._temporaryDirectory, ignore_errors=True)

    def wait(self) -> None:
        """Block until the job has ended, keeping Slicer responsive (console scripting)."""
        while not self.done:
            self.poll()
            self._loop.process_events()
            time.sleep(POLL_INTERVAL_MS / 1000.0)


class SharedStandby:
    """The standby detection worker of a Slicer session and the launcher and environment it was started with,
    shared by every logic object (scripts, the self-test and the widget each make one)."""

    def __init__(self) -> None:
        self.worker: Optional[standby.StandbyWorker] = None
        self.key: Optional[Tuple[str, list]] = None


class WorkerJobs:
    """Starts the module's detections and trainings in worker processes and returns them as jobs.

    Args:
        temporaryRoot: the folder in which each job gets a folder of its own (Slicer's temporary folder).
        launch: the process runner; ``None`` starts a plain subprocess (:func:`jobs.start_worker`).
        startupEnvironment: the environment Slicer was started with (``slicer.util.startupEnvironment``),
            used when the worker runs in Slicer's own Python launcher.
        loop: the main thread's timers.
        shared: the session's standby worker.
        translate: translation of the jobs' messages.
        which, executable: how the worker's Python is found (:func:`jobs.python_launcher`).
    """

    def __init__(self, temporaryRoot: str, launch: Optional[Launcher] = None,
                 startupEnvironment: Optional[Callable[[], Dict[str, str]]] = None,
                 loop: Optional[EventLoop] = None, shared: Optional[SharedStandby] = None,
                 translate: Translate = str, which: Callable[[str], Optional[str]] = shutil.which,
                 executable: str = sys.executable) -> None:
        self._temporaryRoot = temporaryRoot
        self._launch = launch
        self._startupEnvironment = startupEnvironment or (lambda: dict(os.environ))
        self._loop = loop or EventLoop()
        self._shared = shared or SharedStandby()
        self._tr = translate
        self._which = which
        self._executable = executable

    # ---- detection

    def startDetection(self, volumeNode, modelPath: Optional[str] = None, threshold: Optional[float] = None,
                       device: str = "auto") -> MedAutoencoderJob:
        """Start detection in the standby worker process (a worker of its own when that one is busy) and return
        at once; the scene is only changed when it succeeds.

        Args:
            volumeNode: the scalar volume node to analyse.
            modelPath: the model file; ``None`` for the bundled default model.
            threshold: the anomaly threshold; ``None`` for the model's calibrated one.
            device: auto, cpu or gpu (:data:`jobs.DEVICE_CHOICES`).

        Returns:
            The job; its ``result`` is the output nodes by role once it is done.

        Raises:
            MedAutoencoderError: the volume cannot be analysed (named in the message); nothing is left behind.
            ConfigurationError: an unknown device.
        """
        temporaryDirectory, inputPath = self._inputForWorker(volumeNode)
        arguments = jobs.detect_arguments([inputPath], os.path.join(temporaryDirectory, "outputs"),
                                          model_path=modelPath, threshold=threshold, device=device)
        geometryAtStart = bridge.world_geometry(volumeNode)

        def finish(outputs):
            if outputs is None:
                return None
            if not _inScene(volumeNode):
                raise RuntimeError(self._tr("The input volume was removed from the scene while the detection ran."))
            result = bridge.read_worker_outputs(next(iter(outputs.values())))
            return bridge.apply_detection_result(volumeNode, result, geometryAtStart).as_dict()

        with removed_on_failure(temporaryDirectory):
            standbyWorker = self.standby(device)
            if standbyWorker.busy:  # a script started a second detection meanwhile
                python, useStartupEnvironment = self._pythonLauncher()
                worker = self._startWorker(jobs.cli_command(python, arguments), device, useStartupEnvironment)
            else:
                logging.info("MedAutoencoder: detection in the standby worker: %s", " ".join(arguments))
                worker = standbyWorker.run(arguments)
        return MedAutoencoderJob(worker, finish, temporaryDirectory, inputVolume=volumeNode,
                                 nodeNamesByFile={inputPath: volumeNode.GetName()}, loop=self._loop,
                                 translate=self._tr)

    def prepareDetection(self, device: str = "auto") -> None:
        """Start the standby detection worker now (about 5 s of imports and loading), so that a detection
        started later does not wait for it; it ends after some idle minutes.

        Args:
            device: auto, cpu or gpu.
        """
        self.standby(device).start()

    def stopDetectionWorker(self) -> None:
        """End the standby detection worker (and a detection it runs)."""
        if self._shared.worker is not None:
            self._shared.worker.stop()

    def standby(self, device: str) -> standby.StandbyWorker:
        """The standby worker for ``device``. One started for another device (another environment) ends when it
        has answered the detection it may be running.

        Args:
            device: auto, cpu or gpu.

        Returns:
            The session's standby worker, started on first use.
        """
        python, useStartupEnvironment = self._pythonLauncher()
        environment = self._startupEnvironment() if useStartupEnvironment else dict(os.environ)
        environment.update(self._workerEnvironment(device, useStartupEnvironment))
        key = (python, sorted(environment.items()))
        if self._shared.worker is None or self._shared.key != key:
            if self._shared.worker is not None:
                self._shared.worker.retire()
            self._shared.worker = standby.StandbyWorker(python, environment)
            self._shared.key = key
        return self._shared.worker

    # ---- training

    def startTraining(self, data: list, outputPath: str, modelType: str = ModelConfig.name,
                      epochs: int = TrainConfig.epochs, maxMinutes: Optional[float] = None, device: str = "auto",
                      overwrite: bool = False, extraArguments: Optional[Sequence[str]] = None) -> MedAutoencoderJob:
        """Start training in a worker process and return at once. Scene volumes are passed as NRRD files. An idle
        standby detection worker is ended first: the training needs the memory (on a GPU, all it can get).

        Args:
            data: volume nodes and/or file or folder paths of healthy volumes.
            outputPath: the model file to write.
            modelType: the autoencoder type (``MedAutoencoderLib.config.MODEL_TYPES``).
            epochs: the number of epochs.
            maxMinutes: a time budget; ``None`` for none.
            device: auto, cpu or gpu.
            overwrite: replace an existing ``outputPath``.
            extraArguments: further options of ``python -m MedAutoencoderLib train``.

        Returns:
            The job; its ``result`` is the model's path once it is done.

        Raises:
            MedAutoencoderError: a volume cannot be used (named in the message); nothing is left behind.
        """
        if self._shared.worker is not None:
            self._shared.worker.close()

        temporaryDirectory = self._newTemporaryDirectory()
        paths, nodeNamesByFile = [], {}
        with removed_on_failure(temporaryDirectory):  # a refused volume: no copy of the others stays behind
            for index, item in enumerate(data):
                if isinstance(item, str):
                    paths.append(item)
                else:
                    paths.append(bridge.write_volume_for_worker(
                        item, os.path.join(temporaryDirectory, f"training_{index:03d}.nrrd")))
                    nodeNamesByFile[paths[-1]] = item.GetName()
        stopFile = os.path.join(temporaryDirectory, "stop")
        python, useStartupEnvironment = self._pythonLauncher()
        command = jobs.train_command(python, paths, modelType, outputPath, epochs=epochs, max_minutes=maxMinutes,
                                     device=device, stop_file=stopFile, overwrite=overwrite,
                                     extra_arguments=extraArguments or ())
        startTime = time.time()

        def finish(outputs):
            if outputs and outputs.get("model"):
                return outputs["model"]
            # stopped by the user: the worker keeps its last good checkpoint
            if os.path.exists(outputPath) and os.path.getmtime(outputPath) >= startTime:
                return outputPath
            return None

        with removed_on_failure(temporaryDirectory):
            worker = self._startWorker(command, device, useStartupEnvironment, stopFile)
        return MedAutoencoderJob(worker, finish, temporaryDirectory, nodeNamesByFile=nodeNamesByFile,
                                 loop=self._loop, translate=self._tr)

    # ---- segmentation

    def startSegmentationTraining(self, volumes: Sequence, segmentations: Sequence, outputPath: str,
                                  init: Optional[str] = "default", steps: int = SegmentTrainConfig.steps,
                                  device: str = "auto", overwrite: bool = False,
                                  extraArguments: Optional[Sequence[str]] = None) -> MedAutoencoderJob:
        """Start ``segment-train`` in a worker process on scene volumes and their segmentations and return at once.
        Segments named alike in different segmentations are one label; the model records the segment names.

        Args:
            volumes: the training volume nodes.
            segmentations: a segmentation node per volume, in the same order.
            outputPath: the segmentation model file to write.
            init: the autoencoder to start from: a model file, "default" (the bundled one) or None (from scratch).
            steps: optimiser steps.
            device: auto, cpu or gpu.
            overwrite: replace an existing ``outputPath``.
            extraArguments: further options of ``python -m MedAutoencoderLib segment-train``.

        Returns:
            The job; its ``result`` is the model's path once it is done.

        Raises:
            MedAutoencoderError: a node cannot be used, or the counts differ (named); nothing is left behind.
        """
        from MedAutoencoderLib.errors import ConfigurationError
        from MedAutoencoderLib.slicer import segmentation as slicer_segmentation

        if len(volumes) != len(segmentations) or not volumes:
            raise ConfigurationError(f"give one segmentation per training volume ({len(volumes)} volume(s), "
                                     f"{len(segmentations)} segmentation(s))")
        if self._shared.worker is not None:
            self._shared.worker.close()
        values = slicer_segmentation.label_values_by_name(segmentations)
        temporaryDirectory = self._newTemporaryDirectory()
        images, labels, nodeNamesByFile = [], [], {}
        with removed_on_failure(temporaryDirectory):
            for index, (volume, segmentation) in enumerate(zip(volumes, segmentations)):
                image, label = slicer_segmentation.write_labelled_pair_for_worker(
                    volume, segmentation, values, temporaryDirectory, f"training_{index:03d}")
                images.append(image)
                labels.append(label)
                nodeNamesByFile[image], nodeNamesByFile[label] = volume.GetName(), segmentation.GetName()
        stopFile = os.path.join(temporaryDirectory, "stop")
        config = SegmentTrainConfig(images=images, labels=labels, out=str(outputPath), init=init, steps=int(steps),
                                    label_names=list(values), overwrite=overwrite, stop_file=stopFile)
        python, useStartupEnvironment = self._pythonLauncher()
        command = jobs.cli_command(python, ["segment-train", *config.as_arguments(), "--device", jobs.cli_device(device),
                                            "--progress", "json", *[str(a) for a in extraArguments or ()]])
        startTime = time.time()

        def finish(outputs):
            if outputs and outputs.get("model"):
                return outputs["model"]
            if os.path.exists(outputPath) and os.path.getmtime(outputPath) >= startTime:  # stopped: saved as it was
                return outputPath
            return None

        with removed_on_failure(temporaryDirectory):
            worker = self._startWorker(command, device, useStartupEnvironment, stopFile)
        return MedAutoencoderJob(worker, finish, temporaryDirectory, nodeNamesByFile=nodeNamesByFile,
                                 loop=self._loop, translate=self._tr)

    def startSegmentation(self, volumeNode, modelPath: str, device: str = "auto") -> MedAutoencoderJob:
        """Start ``segment`` in a worker process on a volume node and return at once; when it succeeds, the
        result is a new segmentation node on the volume's grid, one segment per label of the model.

        Args:
            volumeNode: the scalar volume node.
            modelPath: the segmentation model file (written by ``segment-train``).
            device: auto, cpu or gpu.

        Returns:
            The job; its ``result`` is the new ``vtkMRMLSegmentationNode`` once it is done.

        Raises:
            MedAutoencoderError: the volume cannot be used (named); nothing is left behind.
        """
        temporaryDirectory, inputPath = self._inputForWorker(volumeNode)
        python, useStartupEnvironment = self._pythonLauncher()
        command = jobs.cli_command(python, ["segment", "--model", str(modelPath), "--images", inputPath, "--out",
                                            os.path.join(temporaryDirectory, "outputs"), "--format", "nrrd",
                                            "--device", jobs.cli_device(device), "--progress", "json"])
        geometryAtStart = bridge.world_geometry(volumeNode)

        def finish(outputs):
            if outputs is None:
                return None
            import json

            from MedAutoencoderLib.io.volumes import read_mask
            from MedAutoencoderLib.slicer.segmentation import labelmap_to_segmentation_node

            if not _inScene(volumeNode):
                raise RuntimeError(self._tr("The input volume was removed from the scene while the segmentation ran."))
            bridge.require_unmoved(volumeNode, geometryAtStart, "segmentation")
            files = next(iter(outputs.values()))
            with open(files["summary"], encoding="utf-8") as stream:
                summary = json.load(stream)
            labels = [(int(entry["value"]), str(entry["name"])) for entry in summary["labels"]]
            return labelmap_to_segmentation_node(volumeNode, read_mask(files["labelmap"]), labels)

        with removed_on_failure(temporaryDirectory):
            worker = self._startWorker(command, device, useStartupEnvironment)
        return MedAutoencoderJob(worker, finish, temporaryDirectory, inputVolume=volumeNode,
                                 nodeNamesByFile={inputPath: volumeNode.GetName()}, loop=self._loop,
                                 translate=self._tr)

    # ---- shared

    def _pythonLauncher(self) -> Tuple[str, bool]:
        return jobs.python_launcher(which=self._which, executable=self._executable)

    def _inputForWorker(self, volumeNode) -> Tuple[str, str]:
        """A new job folder and the volume node written into it for a worker (the folder is removed if that fails)."""
        temporaryDirectory = self._newTemporaryDirectory()
        with removed_on_failure(temporaryDirectory):
            return temporaryDirectory, bridge.write_volume_for_worker(
                volumeNode, os.path.join(temporaryDirectory, "input.nrrd"))

    def _newTemporaryDirectory(self) -> str:
        """A new folder of its own for each job (two jobs started in the same instant never share one)."""
        root = os.path.join(self._temporaryRoot, "MedAutoencoder")
        os.makedirs(root, exist_ok=True)
        return tempfile.mkdtemp(prefix=time.strftime("%Y%m%d_%H%M%S_"), dir=root)

    def _startWorker(self, command: List[str], device: str, useStartupEnvironment: bool,
                     stopFile: Optional[str] = None) -> jobs.WorkerJob:
        logging.info("MedAutoencoder: starting %s", " ".join(command))
        return jobs.start_worker(command, self._workerEnvironment(device, useStartupEnvironment), stop_file=stopFile,
                                 launch=self._launch, use_startup_environment=useStartupEnvironment)

    @staticmethod
    def _workerEnvironment(device: str, useStartupEnvironment: bool) -> Dict[str, str]:
        """What a worker's environment adds to Slicer's (the startup one keeps no PYTHONPATH of Slicer's)."""
        return jobs.worker_environment(device, "" if useStartupEnvironment else os.environ.get("PYTHONPATH", ""))


def _inScene(volumeNode) -> bool:
    """Whether ``volumeNode`` is still in Slicer's scene."""
    import slicer

    return bool(slicer.mrmlScene.IsNodePresent(volumeNode))
