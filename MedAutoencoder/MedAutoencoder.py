"""MedAutoencoder: unsupervised anomaly detection with autoencoders, as a 3D Slicer scripted module.

The heavy lifting is in ``MedAutoencoderLib`` (the same library as the command line). Detection and training run
by default as a separate process of the library's command line so that Slicer never freezes; the MRML work
(volume <-> image conversion, output nodes) is in ``MedAutoencoderLib.slicer.bridge``, starting and following the
worker processes in ``MedAutoencoderLib.slicer.job``, all testable without Slicer. This file holds what needs the
running application: the parameter node, the GUI, dependency installation, timers and views.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from typing import TYPE_CHECKING, Annotated, Callable, Dict, List, Optional

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, Minimum, WithinRange, parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode


def _makeLibraryImportable() -> None:
    """Put the repository root on sys.path when the module runs from a source checkout.

    An installed extension has ``MedAutoencoderLib`` next to this module's folder on Slicer's module path; a
    checkout added with "Additional module paths" only has the module folder itself there.
    """
    import sys

    checkoutRoot = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if importlib.util.find_spec("MedAutoencoderLib") is None and os.path.isdir(
            os.path.join(checkoutRoot, "MedAutoencoderLib")):
        sys.path.append(checkoutRoot)


_makeLibraryImportable()

from MedAutoencoderLib.config import MODEL_TYPES, ModelConfig, TrainConfig  # noqa: E402 (needs the path above)
from MedAutoencoderLib.worker.jobs import DEVICE_CHOICES  # noqa: E402

if TYPE_CHECKING:
    from MedAutoencoderLib.slicer.job import MedAutoencoderJob


#: Where the module's documentation lives (the README section about the Slicer module).
DOCUMENTATION_URL = "https://github.com/medautoencoder/MedAutoencoder#3d-slicer-module"
#: Device choices shown to the user; ``MedAutoencoderLib.worker.jobs.DEVICE_CHOICES`` maps them to the CLI's.
DEVICES = list(DEVICE_CHOICES)
#: The library's model types, its default first.
MODEL_CHOICES = sorted(MODEL_TYPES, key=lambda name: name != ModelConfig.name)
TRAINING_SOURCES = ["scene volumes", "folder"]
#: Slicer before 5.12 (no ``slicer.packaging.pip_ensure``): what to install for each missing package of
#: requirements.txt; --no-deps keeps the PyTorch extension's torch.
PIP_INSTALL_ARGUMENTS = {"monai": "--no-deps monai>=1.4", "scipy": "scipy", "isal": "isal>=1.6"}


#
# MedAutoencoder
#


class MedAutoencoder(ScriptedLoadableModule):
    """Module description shown in Slicer (see ScriptedLoadableModule)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedAutoencoder")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedAutoencoder contributors"]
        self.parent.helpText = _("""
Finds anomalies (lesions, tumours, artefacts) in a volume with an autoencoder trained only on healthy scans:
the model reconstructs what a healthy scan would look like and the difference becomes an anomaly map, a
labelmap and an editable segmentation. Models can be trained on healthy volumes of the scene or of a folder.
See the <a href="{url}">module documentation</a>.
""").format(url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _("""
Built on 3D Slicer, PyTorch, MONAI and SimpleITK. The bundled models are trained on data derived from the MNI
ICBM152 2009a template (Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal
Neurological Institute, McGill University), the IXI dataset (CC BY-SA 3.0) and the SynthSeg label maps
(Apache-2.0).
""")


#
# MedAutoencoderParameterNode
#


@parameterNodeWrapper
class MedAutoencoderParameterNode:
    """
    The choices of the user, saved with the scene.

    inputVolume - volume to analyse.
    modelPath - model file; empty for the bundled default model.
    thresholdAuto, threshold - use the model's calibrated threshold, or this value.
    device - auto, cpu or gpu.
    runInProcess - run detection inside Slicer's process (small volumes) instead of a background process.
    trainingSource - train on checked scene volumes or on a folder.
    trainingVolumes, trainingFolder - the healthy training data.
    modelType, epochs, maxMinutes - training settings (maxMinutes 0: no time limit).
    outputModelPath - model file to write; empty for a new file in the MedAutoencoder models folder.
    resultThreshold - the threshold last applied to a result with the live threshold.
    overlayOpacity - opacity of the anomaly map over the input in the slice views.
    previousLayout - the layout shown before "Show linked views" (0: none recorded).
    """

    inputVolume: Optional[vtkMRMLScalarVolumeNode]
    modelPath: str = ""
    thresholdAuto: bool = True
    threshold: Annotated[float, Minimum(0.0)] = 0.1
    device: Annotated[str, Choice(DEVICES)] = "auto"
    runInProcess: bool = False
    trainingSource: Annotated[str, Choice(TRAINING_SOURCES)] = TRAINING_SOURCES[0]
    trainingVolumes: List[vtkMRMLScalarVolumeNode]
    trainingFolder: str = ""
    modelType: Annotated[str, Choice(MODEL_CHOICES)] = ModelConfig.name
    epochs: Annotated[int, WithinRange(1, 10000)] = TrainConfig.epochs
    maxMinutes: Annotated[float, Minimum(0.0)] = 0.0
    outputModelPath: str = ""
    resultThreshold: Annotated[float, Minimum(0.0)] = 0.0
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.4
    previousLayout: int = 0


#
# MedAutoencoderWidget
#


class MedAutoencoderWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: detection and training sections, and the progress of the running job."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job: Optional[MedAutoencoderJob] = None
        self._jobButton = None
        self._thresholdRangeKey = None
        self._thresholdRangeValue = (0.0, 1.0)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAutoencoder.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedAutoencoderLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.detectButton.connect("clicked(bool)", self.onDetectButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self._onPathChanged)
        self.ui.trainingFolderLineEdit.connect("currentPathChanged(QString)", self._onPathChanged)
        self.ui.outputModelLineEdit.connect("currentPathChanged(QString)", self._onPathChanged)
        self.ui.trainingVolumesSelector.connect("checkedNodesChanged()", self._onTrainingVolumesChanged)
        self._setupResults()

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes: stop a running worker so that it does not outlive Slicer, and
        remove its copies of the scene's volumes (the timer that would have removed them no longer runs)."""
        if self._job is not None:
            self._job.discard()
        self.logic.stopDetectionWorker()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        if self.logic.dependenciesInstalled() and not self._parameterNode.runInProcess:
            try:  # the first Detect then finds the worker started
                self.logic.prepareDetection(device=self._parameterNode.device)
            except Exception:  # Detect will say why; entering the module must not fail on it
                logging.exception("MedAutoencoder: could not start the standby detection worker")

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None and not self._job.done and self._job.inputVolume is not None:
            self._job.cancel()  # a detection's input leaves with the scene: its result would only be an error
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Use the scene's parameter node and preselect the first volume to save the user a click."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            from MedAutoencoderLib.slicer.bridge import default_input_volume

            firstVolumeNode = default_input_volume(slicer.mrmlScene)
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[MedAutoencoderParameterNode]) -> None:
        """Observe the parameter node; its values and the widgets are kept in sync both ways."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # connectParametersToGui returns a tag on every Slicer version (connectGui does not on 5.8)
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(self._widgetsByParameter())
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _widgetsByParameter(self) -> Dict[str, qt.QWidget]:
        """Widgets the parameter node wrapper keeps in sync by itself (paths and checked nodes are done here)."""
        return {
            "inputVolume": self.ui.inputVolumeSelector,
            "thresholdAuto": self.ui.thresholdAutoCheckBox,
            "threshold": self.ui.thresholdSpinBox,
            "device": self.ui.deviceComboBox,
            "runInProcess": self.ui.runInProcessCheckBox,
            "trainingSource": self.ui.trainingSourceComboBox,
            "modelType": self.ui.modelTypeComboBox,
            "epochs": self.ui.epochsSpinBox,
            "maxMinutes": self.ui.maxMinutesSpinBox,
            "overlayOpacity": self.ui.overlayOpacitySlider,
        }

    def _pathWidgetsByParameter(self) -> Dict[str, object]:
        return {
            "modelPath": self.ui.modelPathLineEdit,
            "trainingFolder": self.ui.trainingFolderLineEdit,
            "outputModelPath": self.ui.outputModelLineEdit,
        }

    def _onPathChanged(self, path: str) -> None:
        if not self._parameterNode:
            return
        for name, widget in self._pathWidgetsByParameter().items():
            if getattr(self._parameterNode, name) != widget.currentPath:
                setattr(self._parameterNode, name, widget.currentPath)

    def _onTrainingVolumesChanged(self) -> None:
        if self._parameterNode:
            self._parameterNode.trainingVolumes = list(self.ui.trainingVolumesSelector.checkedNodes())

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._updatePathWidgets()
        self._updateTrainingVolumeChecks()
        self._updateTrainingSourceRows()
        self._updateButtons()
        self._updateResults()

    def _updatePathWidgets(self) -> None:
        for name, widget in self._pathWidgetsByParameter().items():
            value = getattr(self._parameterNode, name)
            if widget.currentPath != value:
                wasBlocked = widget.blockSignals(True)
                widget.currentPath = value
                widget.blockSignals(wasBlocked)

    def _updateTrainingVolumeChecks(self) -> None:
        selector = self.ui.trainingVolumesSelector
        wanted = {node.GetID() for node in self._parameterNode.trainingVolumes if node}
        if wanted == {node.GetID() for node in selector.checkedNodes()}:
            return
        wasBlocked = selector.blockSignals(True)
        for node in list(selector.checkedNodes()) + list(selector.uncheckedNodes()):
            selector.setCheckState(node, qt.Qt.Checked if node.GetID() in wanted else qt.Qt.Unchecked)
        selector.blockSignals(wasBlocked)

    def _updateTrainingSourceRows(self) -> None:
        fromScene = self._parameterNode.trainingSource == TRAINING_SOURCES[0]
        for widget in (self.ui.trainingVolumesLabel, self.ui.trainingVolumesSelector):
            widget.setVisible(fromScene)
        for widget in (self.ui.trainingFolderLabel, self.ui.trainingFolderLineEdit):
            widget.setVisible(not fromScene)

    def _updateButtons(self) -> None:
        """Apply buttons: enabled when their inputs are set; the button of a running job is its Cancel button."""
        running = self._job is not None
        parameters = self._parameterNode
        canDetect = bool(parameters and parameters.inputVolume)
        canTrain = bool(parameters and self.logic.trainingDataChosen(parameters))
        self._setButton(self.ui.detectButton, _("Detect anomalies"), canDetect, running,
                        _("Compute reconstruction, anomaly map and anomaly segmentation of the input volume.")
                        if canDetect else _("Select an input volume."))
        self._setButton(self.ui.trainButton, _("Train model"), canTrain, running,
                        _("Train a model on the healthy volumes; it becomes the selected model when done.")
                        if canTrain else _("Check healthy scene volumes or choose a folder of healthy volumes."))

    def _setButton(self, button, text: str, ready: bool, running: bool, toolTip: str) -> None:
        if running and button is self._jobButton:
            button.text = _("Cancel")
            button.toolTip = _("Stop the running job; nothing is added to the scene.")
            button.enabled = True
        else:
            button.text = text
            button.toolTip = toolTip
            button.enabled = ready and not running

    # ---- running jobs

    def onDetectButton(self) -> None:
        if self._cancelIfRunning(self.ui.detectButton):
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Anomaly detection failed."), waitCursor=True):
            self.logic.ensureDependencies()
            options = dict(modelPath=parameters.modelPath or None, threshold=self._threshold(),
                           device=parameters.device)
            if parameters.runInProcess:
                self._clearProgress(_("Detecting anomalies in Slicer's process..."))
                nodes = self.logic.detectAnomalies(parameters.inputVolume, inProcess=True, **options)
                self._showDetection(parameters.inputVolume, nodes)
                return
            job = self.logic.startDetection(parameters.inputVolume, **options)
            self._follow(job, self.ui.detectButton, self._onDetectionFinished)

    def onTrainButton(self) -> None:
        if self._cancelIfRunning(self.ui.trainButton):
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Training failed to start."), waitCursor=True):
            outputPath = parameters.outputModelPath or self.logic.newModelPath()
            if os.path.exists(outputPath) and not slicer.util.confirmOkCancelDisplay(
                    _("{path} exists. Replace it with the new model?").format(path=outputPath)):
                return
            self.logic.ensureDependencies()
            job = self.logic.startTraining(
                self.logic.trainingData(parameters), modelType=parameters.modelType, outputPath=outputPath,
                epochs=parameters.epochs, maxMinutes=parameters.maxMinutes or None, device=parameters.device,
                overwrite=True)
            self._follow(job, self.ui.trainButton, self._onTrainingFinished)

    def _threshold(self) -> Optional[float]:
        return None if self._parameterNode.thresholdAuto else float(self._parameterNode.threshold)

    def _cancelIfRunning(self, button) -> bool:
        """When a job runs, its button is Cancel: stop the job and tell the caller not to start another."""
        if self._job is None:
            return False
        if button is self._jobButton:
            self._appendLog(_("Cancelling..."))
            button.enabled = False
            self._job.cancel()
        return True

    def _follow(self, job: MedAutoencoderJob, button, onFinished: Callable) -> None:
        self._job = job
        self._jobButton = button
        self._clearProgress(_("Starting..."))
        job.onEvent = self._onJobEvent

        def finished(finishedJob):
            self._job = None
            self._jobButton = None
            self._updateButtons()
            onFinished(finishedJob)

        job.onFinished = finished
        self._updateButtons()

    def _clearProgress(self, message: str) -> None:
        self.ui.statusCollapsibleButton.collapsed = False
        self.ui.progressBar.setValue(0)
        self.ui.timeLabel.text = ""
        self.ui.logTextEdit.clear()
        self._appendLog(message)

    def _appendLog(self, message: str) -> None:
        self.ui.logTextEdit.appendPlainText(message)
        slicer.app.processEvents()

    def _onJobEvent(self, event: dict) -> None:
        from MedAutoencoderLib.worker import jobs

        if event.get("fraction") is not None:
            self.ui.progressBar.setValue(int(round(100 * float(event["fraction"]))))
        if event.get("elapsed_s") is not None:
            remaining = jobs.format_duration(event.get("eta_s"))
            self.ui.timeLabel.text = _("Elapsed: {elapsed}").format(
                elapsed=jobs.format_duration(event["elapsed_s"])) + (
                _(", remaining: about {remaining}").format(remaining=remaining) if remaining else "")
        if event.get("message"):
            self.ui.logTextEdit.appendPlainText(str(event["message"]))

    def _onDetectionFinished(self, job: MedAutoencoderJob) -> None:
        if self._reportUnsuccessful(job, _("Anomaly detection failed.")):
            return
        self._showDetection(job.inputVolume, job.result)

    def _onTrainingFinished(self, job: MedAutoencoderJob) -> None:
        if job.result and self._parameterNode:
            self._parameterNode.modelPath = job.result  # the new model is selected at once
            self._appendLog(_("Model saved to {path}; it is now the selected model.").format(path=job.result))
        if not job.result:
            self._reportUnsuccessful(job, _("Training failed."))

    def _reportUnsuccessful(self, job: MedAutoencoderJob, message: str) -> bool:
        if job.cancelled:
            self._appendLog(_("Cancelled."))
            return True
        if job.error:
            self._appendLog(job.error)
            slicer.util.errorDisplay(message + "\n\n" + job.error, detailedText=job.recentOutput)
            return True
        return False

    def _showDetection(self, inputVolume, nodes: Dict[str, object]) -> None:
        self.ui.progressBar.setValue(100)
        self.logic.showResults(inputVolume, nodes)
        self._appendLog(_("Done: {names}").format(names=", ".join(node.GetName() for node in nodes.values())))
        self.ui.resultsCollapsibleButton.collapsed = False
        self._updateResults()

    # ---- results of the selected input: summary, findings, live threshold, views, report

    def _setupResults(self) -> None:
        self.ui.resultThresholdSlider.connect("valueChanged(double)", self.onResultThresholdChanged)
        self.ui.resetThresholdButton.connect("clicked(bool)", self.onResetThreshold)
        self.ui.overlayOpacitySlider.connect("valueChanged(double)", self.onOverlayOpacityChanged)
        self.ui.findingsTableView.connect("clicked(QModelIndex)", self.onFindingClicked)
        self.ui.showLinkedViewsButton.connect("clicked(bool)", self.onShowLinkedViews)
        self.ui.restoreLayoutButton.connect("clicked(bool)", self.onRestoreLayout)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReport)

    def _resultNodes(self) -> Dict[str, object]:
        if not self._parameterNode or not self._parameterNode.inputVolume:
            return {}
        return self.logic.resultNodes(self._parameterNode.inputVolume)

    def _updateResults(self) -> None:
        """Show the result of the selected input (the last detection, or one saved with the scene)."""
        from MedAutoencoderLib.slicer import report, results

        nodes = self._resultNodes()
        mapNode = nodes.get("anomaly_map")
        for widget in (self.ui.resultThresholdSlider, self.ui.resetThresholdButton, self.ui.findingsTableView,
                       self.ui.overlayOpacitySlider, self.ui.showLinkedViewsButton, self.ui.saveReportButton):
            widget.enabled = bool(nodes)
        self.ui.resultStatusLabel.visible = not nodes
        self.ui.findingsTableView.setMRMLTableNode(nodes.get("findings_table"))
        summary = results.read_summary(mapNode)
        noValue = "\u2014"
        self.ui.resultModelValueLabel.text = _("{model}, contrast: {contrast}").format(
            model=summary.get("model") or noValue, contrast=report.contrast_text(summary) or noValue) if nodes else noValue
        domain = report.domain_text(summary) if nodes else ""
        if domain:
            self.ui.resultModelValueLabel.text += "\n" + domain
        score = summary.get("anomaly_score")
        self.ui.resultScoreValueLabel.text = f"{score:.4g}" if score is not None else noValue
        flagged = summary.get("anomalous_volume_ml")
        self.ui.resultFlaggedValueLabel.text = _("{ml:.2f} mL in {count} finding(s)").format(
            ml=flagged, count=summary.get("n_components", 0)) if flagged is not None else noValue
        calibrated = results.calibrated_threshold(mapNode)
        threshold = summary.get("threshold")
        if mapNode is not None and threshold is not None:
            low, high = self._thresholdRange(mapNode)
            slider = self.ui.resultThresholdSlider
            wasBlocked = slider.blockSignals(True)
            slider.setRange(low, max(high, threshold, calibrated or 0.0))
            slider.singleStep = max((slider.maximum - low) / 1000.0, 1e-4)  # maps range from 0.01 to 100s
            slider.tickInterval = calibrated or 0.0  # ticks at the calibrated value and its multiples
            slider.value = threshold
            slider.blockSignals(wasBlocked)
        source = _("calibrated on healthy scans") if summary.get("threshold_source") == "calibrated" else _(
            "your value")
        self.ui.resultThresholdSourceLabel.text = (
            source + (_("; calibrated: {value:.4g} (tick marks)").format(value=calibrated) if calibrated else "")
            if nodes else "")
        self.ui.resetThresholdButton.enabled = bool(nodes) and calibrated is not None

    def _thresholdRange(self, mapNode) -> tuple:
        """The slider's range for this map, computed again only when its voxels change (a max over the volume)."""
        from MedAutoencoderLib.slicer import results

        key = (mapNode.GetID(), mapNode.GetImageData().GetMTime() if mapNode.GetImageData() else 0)
        if self._thresholdRangeKey != key:
            self._thresholdRangeKey, self._thresholdRangeValue = key, results.threshold_range(mapNode)
        return self._thresholdRangeValue

    def onResultThresholdChanged(self, value: float) -> None:
        nodes = self._resultNodes()
        if not nodes:
            return
        with slicer.util.tryWithErrorDisplay(_("Re-thresholding failed.")):
            self.logic.applyThreshold(nodes, value)

    def onResetThreshold(self) -> None:
        from MedAutoencoderLib.slicer import results

        calibrated = results.calibrated_threshold(self._resultNodes().get("anomaly_map"))
        if calibrated is not None:
            self.ui.resultThresholdSlider.value = calibrated

    def onOverlayOpacityChanged(self, value: float) -> None:
        self.logic.setOverlayOpacity(self._resultNodes(), value)

    def onFindingClicked(self, index) -> None:
        """Centre the slice views on the finding of the clicked row (read from its number: the view may sort)."""
        nodes = self._resultNodes()
        tableNode = nodes.get("findings_table")
        if tableNode is None or not index.isValid():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not go to the finding.")):
            number = int(float(index.sibling(index.row(), 0).data()))
            self.logic.jumpToFinding(tableNode, number - 1)

    def onShowLinkedViews(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not show the linked views."), waitCursor=True):
            previous = self.logic.showLinkedViews(self._parameterNode.inputVolume, self._resultNodes(),
                                                  self._parameterNode.overlayOpacity)
            if previous is not None:
                self._parameterNode.previousLayout = previous

    def onRestoreLayout(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not restore the layout.")):
            self.logic.restoreLayout(self._parameterNode.previousLayout or None)

    def onSaveReport(self) -> None:
        from MedAutoencoderLib.slicer import report

        sceneFile = slicer.mrmlScene.GetURL()
        folder = os.path.dirname(sceneFile) if sceneFile else slicer.app.defaultScenePath
        suggested = report.default_report_path(folder, self._parameterNode.inputVolume.GetName())
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Save report"), suggested,
                                              _("PNG image (*.png)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not save the report."), waitCursor=True):
            written = self.logic.saveReport(self._resultNodes(), path)
            self._appendLog(_("Report saved: {files}").format(files=", ".join(written)))


#
# MedAutoencoderLogic
#


class _QtEventLoop:
    """The main thread's timers for the library's jobs (``MedAutoencoderLib.slicer.job.EventLoop``)."""

    def every(self, milliseconds: int, callback: Callable[[], None]) -> Callable[[], None]:
        timer = qt.QTimer()
        timer.setInterval(milliseconds)
        timer.connect("timeout()", callback)
        timer.start()

        def stop() -> None:  # holds the timer: it lives as long as the job that polls with it
            timer.stop()

        return stop

    def later(self, milliseconds: int, callback: Callable[[], None]) -> None:
        qt.QTimer.singleShot(milliseconds, callback)

    def process_events(self) -> None:
        slicer.app.processEvents()


#: The standby detection worker of this Slicer session, shared by every logic object (scripts, the self-test and
#: the widget each make one); set on first use.
_STANDBY = None


def _sharedStandby():
    global _STANDBY
    if _STANDBY is None:
        from MedAutoencoderLib.slicer.job import SharedStandby

        _STANDBY = SharedStandby()
    return _STANDBY


class MedAutoencoderLogic(ScriptedLoadableModuleLogic):
    """Detection and training on scene volumes, usable without the GUI (e.g. from the Python console).

    Example::

        logic = slicer.util.getModuleLogic("MedAutoencoder")
        nodes = logic.detectAnomalies(slicer.util.getNode("MRHead"))
        modelPath = logic.train([slicer.util.getNode("healthy1"), slicer.util.getNode("healthy2")], epochs=5)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MedAutoencoderParameterNode(super().getParameterNode())

    # ---- dependencies

    @staticmethod
    def dependenciesInstalled() -> bool:
        return all(importlib.util.find_spec(name) is not None for name in ("torch", "monai"))

    def ensureDependencies(self) -> None:
        """Install torch (through the PyTorch extension) and then monai/scipy, after asking; never at import."""
        self._ensureTorch()
        self._ensureRequirements()

    def _ensureTorch(self) -> None:
        if importlib.util.find_spec("torch") is not None:
            return
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError(_("MedAutoencoder needs PyTorch. Install the 'PyTorch' extension from the Extensions "
                                 "Manager, restart Slicer and try again.")) from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled() and torchLogic.installTorch(
                askConfirmation=True, torchVersionRequirement=">=2.1") is None:
            raise RuntimeError(_("MedAutoencoder cannot run without PyTorch; the installation was cancelled."))

    def _ensureRequirements(self) -> None:
        """monai, scipy and isal from requirements.txt, never replacing Slicer's or the PyTorch extension's
        packages."""
        requirementsPath = self.resourcePath("requirements.txt")
        if self._hasPipEnsure():
            slicer.packaging.pip_ensure(slicer.packaging.load_requirements(requirementsPath),
                                        requester="MedAutoencoder", skip_packages=["torch", "SimpleITK", "requests"])
            return
        missing = [name for name in PIP_INSTALL_ARGUMENTS if importlib.util.find_spec(name) is None]
        if not missing:
            return
        if not slicer.util.confirmOkCancelDisplay(
                _("MedAutoencoder needs these Python packages: {names}. Download and install them now?").format(
                    names=", ".join(missing))):
            raise RuntimeError(_("MedAutoencoder cannot run without {names}.").format(names=", ".join(missing)))
        for name in missing:
            slicer.util.pip_install(PIP_INSTALL_ARGUMENTS[name])

    @staticmethod
    def _hasPipEnsure() -> bool:
        """slicer.packaging.pip_ensure exists from Slicer 5.12 on (the submodule is not imported by default)."""
        try:
            import slicer.packaging
        except ImportError:
            return False
        return hasattr(slicer.packaging, "pip_ensure")

    def resourcePath(self, relativePath: str) -> str:
        return os.path.join(os.path.dirname(__file__), "Resources", relativePath)

    # ---- detection

    def detectAnomalies(self, volumeNode, modelPath: Optional[str] = None, threshold: Optional[float] = None,
                        device: str = "auto", inProcess: bool = False, showResult: bool = False) -> Dict[str, object]:
        """Detect anomalies in ``volumeNode`` and return the output nodes by role, waiting for the result.

        Roles: reconstruction, anomaly_map, anomaly_mask (labelmap), anomaly_segmentation, findings_table (one row
        per finding; see ``applyThreshold`` to change the threshold afterwards). ``modelPath`` None
        uses the bundled default model, ``threshold`` None the model's calibrated threshold. With
        ``inProcess`` the work runs in Slicer's own process, otherwise in a worker process.
        """
        if inProcess:
            from MedAutoencoderLib import api
            from MedAutoencoderLib.worker import jobs
            from MedAutoencoderLib.slicer import bridge as slicer_bridge
            from MedAutoencoderLib.config import DetectOptions

            torchDevice = jobs.cli_device(device)
            model = api.load_model(modelPath, device=torchDevice)
            nodes = slicer_bridge.detect_volume_node(volumeNode, model, DetectOptions(threshold=threshold,
                                                                                      device=torchDevice)).as_dict()
        else:
            job = self.startDetection(volumeNode, modelPath=modelPath, threshold=threshold, device=device)
            job.wait()
            nodes = self._resultOrRaise(job)
        if showResult:
            self.showResults(volumeNode, nodes)
        return nodes

    def startDetection(self, volumeNode, modelPath: Optional[str] = None, threshold: Optional[float] = None,
                       device: str = "auto") -> MedAutoencoderJob:
        """Start detection in the standby worker process (a worker of its own when that one is busy) and return
        at once; the scene is only changed when it succeeds."""
        return self._jobs().startDetection(volumeNode, modelPath=modelPath, threshold=threshold, device=device)

    def prepareDetection(self, device: str = "auto") -> None:
        """Start the standby detection worker now (about 5 s of imports and loading), so that a detection
        started later does not wait for it; it ends after some idle minutes."""
        self._jobs().prepareDetection(device)

    def stopDetectionWorker(self) -> None:
        """End the standby detection worker (and a detection it runs)."""
        self._jobs().stopDetectionWorker()

    def showResults(self, inputVolume, nodes: Dict[str, object]) -> None:
        """Input in the background, anomaly map over it in colour, anomaly segmentation as outline."""
        slicer.util.setSliceViewerLayers(background=inputVolume, foreground=nodes["anomaly_map"], label=None,
                                         foregroundOpacity=0.4)

    # ---- results: live threshold, findings, views, report (MedAutoencoderLib.slicer)

    def resultNodes(self, volumeNode) -> Dict[str, object]:
        """The output nodes of the last detection of ``volumeNode`` by role ({} when it has none)."""
        from MedAutoencoderLib.slicer import results

        return results.result_nodes(volumeNode)

    def applyThreshold(self, nodes: Dict[str, object], value: float) -> dict:
        """Threshold a result again without running the model: mask, segmentation, findings table and summary
        follow; the value is stored on the output nodes and in the parameter node. Returns the new summary."""
        from MedAutoencoderLib.slicer import results

        summary = results.apply_threshold(nodes, value)
        self.getParameterNode().resultThreshold = float(value)
        return summary

    def jumpToFinding(self, tableNode, row: int) -> tuple:
        """Centre the slice views on the finding in ``row`` (0-based) of a findings table; returns its RAS."""
        from MedAutoencoderLib.slicer import results

        return results.jump_to_finding(slicer.mrmlScene, tableNode, row)

    def showLinkedViews(self, volumeNode, nodes: Dict[str, object], opacity: float = 0.4) -> Optional[int]:
        """Input, reconstruction and input + anomaly map side by side, linked, the segmentation in 3D below.
        Returns the layout shown before (for ``restoreLayout``), None when the linked views were shown already."""
        from MedAutoencoderLib.slicer import views

        previous = views.show_result_layout(slicer.mrmlScene)
        slicer.app.processEvents()  # the layout manager makes the views' slice and composite nodes
        views.configure_result_views(slicer.mrmlScene, volumeNode, nodes, opacity)
        layoutManager = slicer.app.layoutManager()
        for name in views.VIEW_NAMES:
            sliceWidget = layoutManager.sliceWidget(name)
            if sliceWidget is not None:
                sliceWidget.sliceLogic().FitSliceToAll()
        if layoutManager.threeDViewCount:
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()
        return previous

    def restoreLayout(self, previous: Optional[int] = None) -> None:
        """Show the layout the user had before ``showLinkedViews`` (conventional when not known)."""
        from MedAutoencoderLib.slicer import views

        views.restore_layout(slicer.mrmlScene, previous)

    def setOverlayOpacity(self, nodes: Dict[str, object], opacity: float) -> None:
        from MedAutoencoderLib.slicer import views

        views.set_overlay_opacity(slicer.mrmlScene, nodes.get("anomaly_map"), opacity)

    def saveReport(self, nodes: Dict[str, object], path: str) -> List[str]:
        """Write the result's report (PNG, PDF with matplotlib, summary JSON); returns the files written."""
        from MedAutoencoderLib.slicer import results

        return results.save_report(nodes, path)

    # ---- training

    def trainingDataChosen(self, parameters) -> bool:
        if parameters.trainingSource == TRAINING_SOURCES[0]:
            return any(parameters.trainingVolumes)
        return bool(parameters.trainingFolder)

    def trainingData(self, parameters) -> list:
        """Scene volume nodes or the folder path, as the parameter node says."""
        if parameters.trainingSource == TRAINING_SOURCES[0]:
            return [node for node in parameters.trainingVolumes if node]
        return [parameters.trainingFolder]

    def newModelPath(self) -> str:
        """A new model file in the MedAutoencoder folder of the user's Slicer documents folder."""
        folder = os.path.join(slicer.app.defaultScenePath, "MedAutoencoderModels")
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, time.strftime("model_%Y%m%d_%H%M%S.pt"))

    def train(self, data: list, modelType: str = ModelConfig.name, outputPath: Optional[str] = None,
              epochs: int = TrainConfig.epochs, maxMinutes: Optional[float] = None, device: str = "auto",
              overwrite: bool = False, extraArguments: Optional[List[str]] = None) -> str:
        """Train a model on healthy data (volume nodes and/or file or folder paths) and return its path.

        Waits for the result. ``extraArguments`` are further options of ``python -m MedAutoencoderLib train``.
        """
        job = self.startTraining(data, modelType=modelType, outputPath=outputPath, epochs=epochs,
                                 maxMinutes=maxMinutes, device=device, overwrite=overwrite,
                                 extraArguments=extraArguments)
        job.wait()
        return self._resultOrRaise(job)

    def startTraining(self, data: list, modelType: str = ModelConfig.name, outputPath: Optional[str] = None,
                      epochs: int = TrainConfig.epochs, maxMinutes: Optional[float] = None, device: str = "auto",
                      overwrite: bool = False, extraArguments: Optional[List[str]] = None) -> MedAutoencoderJob:
        """Start training in a worker process and return at once. Scene volumes are passed as NRRD files. An idle
        standby detection worker is ended first: the training needs the memory (on a GPU, all it can get)."""
        return self._jobs().startTraining(data, outputPath or self.newModelPath(), modelType=modelType, epochs=epochs,
                                          maxMinutes=maxMinutes, device=device, overwrite=overwrite,
                                          extraArguments=extraArguments)

    # ---- segmentation from autoencoder pre-training

    def trainSegmentation(self, volumes: list, segmentations: list, outputPath: Optional[str] = None,
                          init: Optional[str] = "default", steps: int = 500, device: str = "auto",
                          overwrite: bool = False, extraArguments: Optional[List[str]] = None) -> str:
        """Train a segmentation network from an autoencoder (``init``: a model file, "default" for the bundled one,
        None from scratch) on volume nodes and their segmentation nodes (one per volume; segments named alike are
        one label) in a worker process, wait, and return the model's path."""
        job = self._jobs().startSegmentationTraining(
            volumes, segmentations, outputPath or self.newModelPath().replace("model_", "segmentation_"), init=init,
            steps=steps, device=device, overwrite=overwrite, extraArguments=extraArguments)
        job.wait()
        return self._resultOrRaise(job)

    def segmentVolume(self, volumeNode, modelPath: str, device: str = "auto", inProcess: bool = False):
        """Segment ``volumeNode`` with a segmentation model into a new segmentation node on its grid, waiting for
        the result (in a worker process unless ``inProcess``)."""
        if inProcess:
            from MedAutoencoderLib.slicer.segmentation import segment_volume_node
            from MedAutoencoderLib.worker import jobs

            return segment_volume_node(volumeNode, modelPath, device=jobs.cli_device(device))
        job = self._jobs().startSegmentation(volumeNode, modelPath, device=device)
        job.wait()
        return self._resultOrRaise(job)

    # ---- shared

    def _jobs(self):
        """The library's job logic, given what it needs of the running Slicer application."""
        from MedAutoencoderLib.slicer.job import WorkerJobs

        return WorkerJobs(slicer.app.temporaryPath, launch=slicer.util.launchConsoleProcess,
                          startupEnvironment=slicer.util.startupEnvironment, loop=_QtEventLoop(),
                          shared=_sharedStandby(), translate=_)

    def _resultOrRaise(self, job: MedAutoencoderJob):
        if job.error:
            raise RuntimeError(job.error + "\n" + job.recentOutput)
        if job.cancelled or job.result is None:
            raise RuntimeError(_("The job was cancelled."))
        return job.result


#
# MedAutoencoderTest
#


class MedAutoencoderTest(ScriptedLoadableModuleTest):
    """The user's path in a real Slicer: a small volume, a model, detection in both modes, outputs on its grid."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_DetectAnomaliesOnInputGeometry()

    def test_DetectAnomaliesOnInputGeometry(self):
        import numpy as np
        from MedAutoencoderLib.data import synthetic

        self.delayDisplay("Making a small rotated, anisotropic volume")
        logic = MedAutoencoderLogic()
        logic.ensureDependencies()
        inputVolume = self._volumeFromImage(synthetic.toy_volume(np.random.default_rng(7), shape=(32, 32, 24),
                                                                 spacing=(1.2, 1.0, 2.0),
                                                                 direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0,
                                                                            0.0, 0.0, 1.0)), "toy")
        modelPath = self._model(logic)

        self.delayDisplay("Detecting in a worker process")
        nodes = logic.detectAnomalies(inputVolume, modelPath=modelPath, device="cpu")
        self._assertOnInputGeometry(inputVolume, nodes)
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()

        self.delayDisplay("Detecting again in Slicer's process: the same nodes are updated")
        again = logic.detectAnomalies(inputVolume, modelPath=modelPath, device="cpu", inProcess=True,
                                      showResult=True)
        self.assertEqual({role: node.GetID() for role, node in nodes.items()},
                         {role: node.GetID() for role, node in again.items()})
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)

        self.delayDisplay("Live threshold, linked views, report")
        summary = logic.applyThreshold(again, 0.0)  # everything scored is flagged
        self.assertEqual(summary["n_components"], again["findings_table"].GetTable().GetNumberOfRows())
        self.assertEqual(float(again["anomaly_mask"].GetAttribute("MedAutoencoder.Threshold")), 0.0)
        previous = logic.showLinkedViews(inputVolume, again)
        self.assertEqual(slicer.app.layoutManager().sliceWidget("MedAutoencoderOverlay").mrmlSliceCompositeNode()
                         .GetForegroundVolumeID(), again["anomaly_map"].GetID())
        if summary["n_components"]:
            logic.jumpToFinding(again["findings_table"], 0)
        logic.restoreLayout(previous)
        written = logic.saveReport(again, os.path.join(slicer.app.temporaryPath, "MedAutoencoderTest_report.png"))
        self.assertTrue(all(os.path.getsize(path) > 0 for path in written))
        self.delayDisplay("Test passed")

    def _model(self, logic: MedAutoencoderLogic) -> Optional[str]:
        """The bundled default model when present, else a tiny model trained here in seconds."""
        from MedAutoencoderLib import api
        import numpy as np
        from MedAutoencoderLib.data import synthetic

        if api.DEFAULT_MODEL.is_file():
            return None
        self.delayDisplay("Training a tiny model")
        healthy = [self._volumeFromImage(synthetic.toy_volume(np.random.default_rng(seed), shape=(32, 32, 24)),
                                         f"healthy{seed}") for seed in range(3)]
        outputPath = os.path.join(slicer.app.temporaryPath, "MedAutoencoderTest_tiny.pt")
        modelPath = logic.train(healthy, outputPath=outputPath, epochs=1, device="cpu", overwrite=True,
                                extraArguments=["--size", "32", "32", "24", "--spacing", "2", "2", "2",
                                                "--channels", "4", "8"])
        self.assertTrue(os.path.isfile(modelPath))
        return modelPath

    def _volumeFromImage(self, image, name: str):
        from MedAutoencoderLib.slicer import bridge as slicer_bridge

        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer_bridge.update_volume_node_from_sitk(volumeNode, image)
        volumeNode.CreateDefaultDisplayNodes()
        return volumeNode

    def _assertOnInputGeometry(self, inputVolume, nodes: Dict[str, object]) -> None:
        expected = vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(expected)
        self.assertEqual(set(nodes), {"reconstruction", "anomaly_map", "anomaly_mask", "anomaly_segmentation",
                                      "findings_table"})
        for role in ("reconstruction", "anomaly_map", "anomaly_mask"):
            node = nodes[role]
            self.assertEqual(node.GetName(), f"toy_{role}")
            self.assertEqual(node.GetImageData().GetDimensions(), inputVolume.GetImageData().GetDimensions())
            actual = vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(actual)
            for row in range(4):
                for column in range(4):
                    self.assertAlmostEqual(actual.GetElement(row, column), expected.GetElement(row, column))
        self.assertTrue(nodes["anomaly_mask"].IsA("vtkMRMLLabelMapVolumeNode"))
        self.assertTrue(nodes["anomaly_segmentation"].IsA("vtkMRMLSegmentationNode"))
